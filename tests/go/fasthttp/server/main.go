// Command server is the test target for servers that do not use net/http: fasthttp
// (github.com/valyala/fasthttp) and fiber on top of it (-impl fasthttp|fiber2, and fiber3 when
// built with -tags fiber3), each serving the same routes, so a test can compare what the
// collector's socket parser counted with what the client sent:
//
//	GET|HEAD /users/{id}          200
//	POST     /users/{id}/orders   201  (the request body is read)
//	GET      /boom/{n}            500
//	GET      /empty/{id}          204  (no body)
//	GET      /stream/{n}          200  n chunks of 1000 bytes, each flushed: chunked coding
//	GET      /big/{kib}           200  kib KiB by Content-Length (many segments)
//	GET      /slow/{ms}           200  after sleeping ms milliseconds
//	anything else                 404
//
// It prints "listening on ADDR" once it accepts connections.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// servers by -impl name; fiber3.go adds "fiber3".
var servers = map[string]func(net.Listener) error{
	"fasthttp": serveFasthttp,
	"fiber2":   serveFiber2,
}

// streamChunks writes n pieces of 1000 bytes, each flushed and followed by a pause, so each
// leaves as its own chunk (without the pause fasthttp's pipe may join them).
func streamChunks(n int) func(w *bufio.Writer) {
	return func(w *bufio.Writer) {
		piece := bytes.Repeat([]byte("c"), 1000)
		for i := 0; i < n; i++ {
			w.Write(piece)
			if err := w.Flush(); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

func serveFasthttp(ln net.Listener) error {
	h := func(ctx *fasthttp.RequestCtx) {
		parts := strings.Split(strings.Trim(string(ctx.Path()), "/"), "/")
		method := string(ctx.Method())
		get := method == "GET" || method == "HEAD"
		switch {
		case len(parts) == 2 && parts[0] == "users" && get:
			ctx.SetContentType("text/plain")
			ctx.SetBodyString("user " + parts[1])
		case len(parts) == 3 && parts[0] == "users" && parts[2] == "orders" && method == "POST":
			ctx.SetStatusCode(201)
			ctx.SetBodyString(fmt.Sprintf("order of %d bytes", len(ctx.PostBody())))
		case len(parts) == 2 && parts[0] == "boom" && get:
			ctx.SetStatusCode(500)
			ctx.SetBodyString("boom")
		case len(parts) == 2 && parts[0] == "empty" && get:
			ctx.SetStatusCode(204)
		case len(parts) == 2 && parts[0] == "stream" && get:
			ctx.SetBodyStreamWriter(streamChunks(atoi(parts[1])))
		case len(parts) == 2 && parts[0] == "big" && get:
			ctx.SetBody(bytes.Repeat([]byte("x"), atoi(parts[1])*1024))
		case len(parts) == 2 && parts[0] == "slow" && get:
			time.Sleep(time.Duration(atoi(parts[1])) * time.Millisecond)
			ctx.SetBodyString("slow")
		default:
			ctx.SetStatusCode(404)
			ctx.SetBodyString("not found")
		}
	}
	return (&fasthttp.Server{Handler: h}).Serve(ln)
}

func serveFiber2(ln net.Listener) error {
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Get("/users/:id", func(c *fiber.Ctx) error { return c.SendString("user " + c.Params("id")) })
	app.Post("/users/:id/orders", func(c *fiber.Ctx) error {
		return c.Status(201).SendString(fmt.Sprintf("order of %d bytes", len(c.Body())))
	})
	app.Get("/boom/:n", func(c *fiber.Ctx) error { return c.Status(500).SendString("boom") })
	app.Get("/empty/:id", func(c *fiber.Ctx) error { return c.SendStatus(204) })
	app.Get("/stream/:n", func(c *fiber.Ctx) error {
		c.Context().SetBodyStreamWriter(streamChunks(atoi(c.Params("n"))))
		return nil
	})
	app.Get("/big/:kib", func(c *fiber.Ctx) error {
		return c.Send(bytes.Repeat([]byte("x"), atoi(c.Params("kib"))*1024))
	})
	app.Get("/slow/:ms", func(c *fiber.Ctx) error {
		time.Sleep(time.Duration(atoi(c.Params("ms"))) * time.Millisecond)
		return c.SendString("slow")
	})
	// Anything else: fiber's own 404.
	return app.Listener(ln)
}

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to listen on")
	name := flag.String("impl", "", "server implementation: fasthttp, fiber2 or fiber3")
	flag.Parse()
	serve, ok := servers[*name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown -impl %q\n", *name)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	log.Fatal(serve(ln))
}
