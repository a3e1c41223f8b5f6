// loadgen: a fixed-arrival-rate (open-loop) HTTP load generator, standard library only.
//
// Request i is due at start + i/rate whatever happened to earlier requests, and
// its latency is measured from that due time, not from when a connection was
// free to send it: queueing behind a slow response counts (latency corrected
// for coordinated omission, as wrk2 and vegeta do). The service time (from the
// actual send) is reported beside it.
//
// Each of the -conns workers owns one keep-alive connection and sends one
// request at a time on it (HTTP/1.1, like wrk's connections): -conns clients,
// every connection in regular use. (One shared pool would hand out its most
// recently used connections first, leave the others idle until the server's
// keep-alive timeout closes them together, and then open hundreds at once at
// the next hiccup: a handshake storm the generator made, not the server.)
//
// -warmup S sends at the same rate for S seconds first and leaves those
// requests out of the figures: connections and TLS sessions are open and the
// servers' caches warm when the measured window starts. The per-second
// timeline (count, p50, p99, max of each second of due times) shows whether a
// tail comes from one stall or from every second.
//
// Bounded: at most -warmup + -duration seconds (each at most 600) and
// rate*(warmup+duration) requests, and only the given URL is dialled.
//
//	loadgen -url https://10.0.0.1/hello -rate 5000 -duration 20 -warmup 5 -conns 64 -cacert ca.crt
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"
)

type result struct {
	Target         string             `json:"target"`
	Rate           float64            `json:"rate_requested"`
	Duration       float64            `json:"duration_s"`
	Warmup         float64            `json:"warmup_s"`
	WarmupSent     int                `json:"warmup_requests"`
	Connections    int                `json:"connections"`
	Sent           int                `json:"requests"`
	Errors         int                `json:"errors"`
	Non2xx         int                `json:"non_2xx"`
	Achieved       float64            `json:"rate_achieved"`
	Latency        map[string]float64 `json:"latency_ms"`
	ServiceTime    map[string]float64 `json:"service_time_ms"`
	CorrectedForCO bool               `json:"corrected_for_coordinated_omission"`
	FirstError     string             `json:"first_error,omitempty"`
	Generator      string             `json:"generator"`
	Timeline       []second           `json:"timeline"`
}

// second: the requests due in one second of the measured window.
type second struct {
	At    int     `json:"s"`
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

type job struct {
	at      time.Time
	measure bool
}

func percentiles(values []float64) map[string]float64 {
	out := map[string]float64{}
	if len(values) == 0 {
		return out
	}
	sort.Float64s(values)
	at := func(q float64) float64 {
		i := int(q * float64(len(values)-1))
		return values[i]
	}
	out["p50"], out["p90"], out["p99"], out["p999"], out["max"] = at(0.50), at(0.90), at(0.99), at(0.999), values[len(values)-1]
	return out
}

func main() {
	url := flag.String("url", "", "URL to call (GET)")
	rate := flag.Float64("rate", 1000, "requests per second (arrival rate)")
	duration := flag.Float64("duration", 10, "seconds of load (at most 600)")
	warmup := flag.Float64("warmup", 0, "seconds of load before the measured window, left out of the figures (at most 600)")
	conns := flag.Int("conns", 64, "maximum concurrent connections (and requests in flight)")
	cacert := flag.String("cacert", "", "CA certificate (PEM) for https URLs")
	insecure := flag.Bool("insecure", false, "skip TLS verification (lab only)")
	timeout := flag.Float64("timeout", 10, "per-request timeout in seconds")
	flag.Parse()
	if *url == "" || *rate <= 0 || *duration <= 0 || *duration > 600 || *warmup < 0 || *warmup > 600 || *conns < 1 {
		fmt.Fprintln(os.Stderr, "usage: loadgen -url URL -rate N -duration S(<=600) [-warmup S(<=600)] [-conns N] [-cacert FILE]")
		os.Exit(2)
	}
	tlsConfig := &tls.Config{InsecureSkipVerify: *insecure} //nolint:gosec // -insecure is for labs
	if *cacert != "" {
		pem, err := os.ReadFile(*cacert)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintln(os.Stderr, "no certificate in", *cacert)
			os.Exit(2)
		}
		// Lab certificates name the host while the benchmark dials its address:
		// verify the chain against the CA, not the name.
		tlsConfig.InsecureSkipVerify = true
		tlsConfig.VerifyConnection = func(cs tls.ConnectionState) error {
			opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	}
	// a connection that is closed and opened again resumes its TLS session, as browsers do
	// (one target: the cache, keyed by server, needs no more than the default size)
	tlsConfig.ClientSessionCache = tls.NewLRUClientSessionCache(0)
	newClient := func() *http.Client {
		transport := &http.Transport{
			TLSClientConfig:     tlsConfig,
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			MaxIdleConns:        1,
			ForceAttemptHTTP2:   false,
			TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 like the other generators
		}
		return &http.Client{Transport: transport, Timeout: time.Duration(*timeout * float64(time.Second))}
	}

	warm := int(*rate * *warmup)
	total := int(*rate * *duration)
	interval := time.Duration(float64(time.Second) / *rate)
	due := make(chan job, warm+total)
	var mu sync.Mutex
	latencies := make([]float64, 0, total)
	service := make([]float64, 0, total)
	perSecond := make([][]float64, int(*duration)+1)
	var measureStart time.Time // set before the first measured job is queued
	errors, non2xx := 0, 0
	firstError := ""
	var wg sync.WaitGroup
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		client := newClient()
		go func() {
			defer wg.Done()
			for j := range due {
				at := j.at
				sent := time.Now()
				resp, err := client.Get(*url)
				status := 0
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				done := time.Now()
				if !j.measure {
					continue
				}
				mu.Lock()
				if err != nil {
					errors++
					if firstError == "" {
						firstError = err.Error()
					}
				} else {
					if status < 200 || status > 299 {
						non2xx++
					}
					latency := float64(done.Sub(at).Microseconds()) / 1000
					latencies = append(latencies, latency)
					if s := int(at.Sub(measureStart).Seconds()); s >= 0 && s < len(perSecond) {
						perSecond[s] = append(perSecond[s], latency)
					}
					service = append(service, float64(done.Sub(sent).Microseconds())/1000)
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	measureStart = start.Add(time.Duration(warm) * interval)
	for i := 0; i < warm+total; i++ {
		at := start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			time.Sleep(wait)
		}
		due <- job{at: at, measure: i >= warm} // buffered: a late worker never delays the schedule
	}
	close(due)
	wg.Wait()
	elapsed := time.Since(measureStart).Seconds()
	timeline := []second{}
	for s, values := range perSecond {
		if len(values) == 0 {
			continue
		}
		p := percentiles(values)
		timeline = append(timeline, second{At: s, Count: len(values), P50: p["p50"], P99: p["p99"], Max: p["max"]})
	}
	out := result{
		Target: *url, Rate: *rate, Duration: elapsed, Warmup: *warmup, WarmupSent: warm,
		Connections: *conns, Sent: total, Timeline: timeline,
		Errors: errors, Non2xx: non2xx, Achieved: float64(len(latencies)) / elapsed,
		Latency: percentiles(latencies), ServiceTime: percentiles(service),
		CorrectedForCO: true, FirstError: firstError, Generator: "keel loadgen (Go, open loop)",
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
