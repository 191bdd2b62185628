//go:build fiber3

package main

import (
	"bytes"
	"fmt"
	"net"
	"time"

	fiber3 "github.com/gofiber/fiber/v3"
)

func init() { servers["fiber3"] = serveFiber3 }

func serveFiber3(ln net.Listener) error {
	app := fiber3.New()
	app.Get("/users/:id", func(c fiber3.Ctx) error { return c.SendString("user " + c.Params("id")) })
	app.Post("/users/:id/orders", func(c fiber3.Ctx) error {
		return c.Status(201).SendString(fmt.Sprintf("order of %d bytes", len(c.Body())))
	})
	app.Get("/boom/:n", func(c fiber3.Ctx) error { return c.Status(500).SendString("boom") })
	app.Get("/empty/:id", func(c fiber3.Ctx) error { return c.SendStatus(204) })
	app.Get("/stream/:n", func(c fiber3.Ctx) error {
		return c.SendStreamWriter(streamChunks(atoi(c.Params("n"))))
	})
	app.Get("/big/:kib", func(c fiber3.Ctx) error {
		return c.Send(bytes.Repeat([]byte("x"), atoi(c.Params("kib"))*1024))
	})
	app.Get("/slow/:ms", func(c fiber3.Ctx) error {
		time.Sleep(time.Duration(atoi(c.Params("ms"))) * time.Millisecond)
		return c.SendString("slow")
	})
	return app.Listener(ln, fiber3.ListenConfig{DisableStartupMessage: true})
}
