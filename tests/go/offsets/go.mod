module example.invalid/collector/offsets

go 1.21
