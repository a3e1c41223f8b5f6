// loadgen: a fixed-arrival-rate (open-loop) HTTP load generator, standard library only.
//
// Request i is due at start + i/rate whatever happened to earlier requests, and
// its latency is measured from that due time, not from when a connection was
// free to send it: queueing behind a slow response counts (latency corrected
// for coordinated omission, as wrk2 and vegeta do). The service time (from the
// actual send) is reported beside it.
//
// Bounded: at most -duration seconds (max 600) and rate*duration requests, and
// only the given URL is dialled.
//
//	loadgen -url https://10.0.0.1/hello -rate 5000 -duration 20 -conns 64 -cacert ca.crt
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
	conns := flag.Int("conns", 64, "maximum concurrent connections (and requests in flight)")
	cacert := flag.String("cacert", "", "CA certificate (PEM) for https URLs")
	insecure := flag.Bool("insecure", false, "skip TLS verification (lab only)")
	timeout := flag.Float64("timeout", 10, "per-request timeout in seconds")
	flag.Parse()
	if *url == "" || *rate <= 0 || *duration <= 0 || *duration > 600 || *conns < 1 {
		fmt.Fprintln(os.Stderr, "usage: loadgen -url URL -rate N -duration S(<=600) [-conns N] [-cacert FILE]")
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
	transport := &http.Transport{
		TLSClientConfig:     tlsConfig,
		MaxConnsPerHost:     *conns,
		MaxIdleConnsPerHost: *conns,
		MaxIdleConns:        *conns,
		ForceAttemptHTTP2:   false,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 like the other generators
	}
	client := &http.Client{Transport: transport, Timeout: time.Duration(*timeout * float64(time.Second))}

	total := int(*rate * *duration)
	interval := time.Duration(float64(time.Second) / *rate)
	due := make(chan time.Time, total)
	var mu sync.Mutex
	latencies := make([]float64, 0, total)
	service := make([]float64, 0, total)
	errors, non2xx := 0, 0
	firstError := ""
	var wg sync.WaitGroup
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for at := range due {
				sent := time.Now()
				resp, err := client.Get(*url)
				status := 0
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				done := time.Now()
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
					latencies = append(latencies, float64(done.Sub(at).Microseconds())/1000)
					service = append(service, float64(done.Sub(sent).Microseconds())/1000)
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := 0; i < total; i++ {
		at := start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			time.Sleep(wait)
		}
		due <- at // buffered: a late worker never delays the schedule
	}
	close(due)
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	out := result{
		Target: *url, Rate: *rate, Duration: elapsed, Connections: *conns, Sent: total,
		Errors: errors, Non2xx: non2xx, Achieved: float64(len(latencies)) / elapsed,
		Latency: percentiles(latencies), ServiceTime: percentiles(service),
		CorrectedForCO: true, FirstError: firstError, Generator: "keel loadgen (Go, open loop)",
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
