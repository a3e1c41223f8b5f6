module keel/loadgen

go 1.19
