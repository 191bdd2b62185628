module example.invalid/collector/testserver

go 1.21
