module example.invalid/collector/h2client

go 1.24
