//go:build echo5

package main

import (
	"net/http"
	"reflect"

	echo5 "github.com/labstack/echo/v5"
)

func init() { routers["echo5"] = echo5Router }

func echo5Router() http.Handler {
	e := echo5.New()
	e.GET("/users/:id", func(c *echo5.Context) error { return c.String(200, "user") })
	e.POST("/users/:id/orders", func(c *echo5.Context) error { return c.String(201, "order") })
	api := e.Group("/api/v1")
	api.GET("/items/:name", func(c *echo5.Context) error { return c.String(200, "item") })
	e.GET("/boom/:n", func(c *echo5.Context) error { return c.String(500, "boom") })
	e.GET("/quiet/:id", func(c *echo5.Context) error { return nil })
	return e
}

func init() {
	offsetRows = append(offsetRows, func() offsetRow {
		c := reflect.TypeOf(echo5.Context{})
		return echoRow("github.com/labstack/echo/v5", c)
	})
}
