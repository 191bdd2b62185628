//go:build grpcdial

package main

import "google.golang.org/grpc"

// dial for grpc-go before grpc.NewClient (1.63): grpc.Dial, which differs only in connecting at
// once instead of at the first call; the calls and statuses the tests count are the same.
func dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.Dial(target, opts...)
}
