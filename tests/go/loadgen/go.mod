module example.invalid/collector/loadgen

go 1.21
