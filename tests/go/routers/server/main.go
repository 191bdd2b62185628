// Command server is the test target for route templates: one HTTP/1.1 server per router
// (-router gin|echo4|chi|chi1|gorilla, and echo5 when built with -tags echo5), each serving
// the same routes in its own syntax, so a test can compare the route labels with the
// templates it registered:
//
//	GET  /users/{id}             200
//	POST /users/{id}/orders      201
//	GET  /api/v1/items/{name}    200  (through the router's group / subrouter / mount)
//	GET  /boom/{n}               500
//	GET  /quiet/{id}             200  written by net/http (the handler writes nothing)
//	anything else                404  (no template: the collector's fallback)
//
// It prints "listening on ADDR" once it accepts connections.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/gin-gonic/gin"
	chi1 "github.com/go-chi/chi"
	"github.com/go-chi/chi/v5"
	"github.com/gorilla/mux"
	echo4 "github.com/labstack/echo/v4"
)

// routers by -router name; echo5.go adds "echo5".
var routers = map[string]func() http.Handler{
	"gin":     ginRouter,
	"echo4":   echo4Router,
	"chi":     chiRouter,
	"chi1":    chi1Router,
	"gorilla": gorillaRouter,
}

func ginRouter() http.Handler {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.GET("/users/:id", func(c *gin.Context) { c.String(200, "user %s", c.Param("id")) })
	r.POST("/users/:id/orders", func(c *gin.Context) { c.String(201, "order") })
	api := r.Group("/api/v1")
	api.GET("/items/:name", func(c *gin.Context) { c.String(200, "item") })
	r.GET("/boom/:n", func(c *gin.Context) { c.String(500, "boom") })
	r.GET("/quiet/:id", func(c *gin.Context) {})
	return r
}

func echo4Router() http.Handler {
	e := echo4.New()
	e.HideBanner = true
	e.GET("/users/:id", func(c echo4.Context) error { return c.String(200, "user") })
	e.POST("/users/:id/orders", func(c echo4.Context) error { return c.String(201, "order") })
	api := e.Group("/api/v1")
	api.GET("/items/:name", func(c echo4.Context) error { return c.String(200, "item") })
	e.GET("/boom/:n", func(c echo4.Context) error { return c.String(500, "boom") })
	e.GET("/quiet/:id", func(c echo4.Context) error { return nil })
	return e
}

func chiRouter() http.Handler {
	r := chi.NewRouter()
	r.Get("/users/{id}", text(200, "user"))
	r.Post("/users/{id}/orders", text(201, "order"))
	api := chi.NewRouter()
	api.Get("/items/{name}", text(200, "item"))
	r.Mount("/api/v1", api)
	r.Get("/boom/{n}", text(500, "boom"))
	r.Get("/quiet/{id}", func(http.ResponseWriter, *http.Request) {})
	return r
}

func chi1Router() http.Handler {
	r := chi1.NewRouter()
	r.Get("/users/{id}", text(200, "user"))
	r.Post("/users/{id}/orders", text(201, "order"))
	api := chi1.NewRouter()
	api.Get("/items/{name}", text(200, "item"))
	r.Mount("/api/v1", api)
	r.Get("/boom/{n}", text(500, "boom"))
	r.Get("/quiet/{id}", func(http.ResponseWriter, *http.Request) {})
	return r
}

func gorillaRouter() http.Handler {
	r := mux.NewRouter()
	r.HandleFunc("/users/{id}", text(200, "user")).Methods("GET")
	r.HandleFunc("/users/{id}/orders", text(201, "order")).Methods("POST")
	api := r.PathPrefix("/api/v1").Subrouter()
	api.HandleFunc("/items/{name}", text(200, "item")).Methods("GET")
	r.HandleFunc("/boom/{n}", text(500, "boom")).Methods("GET")
	r.HandleFunc("/quiet/{id}", func(http.ResponseWriter, *http.Request) {}).Methods("GET")
	return r
}

func text(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}
}

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to listen on")
	name := flag.String("router", "", "router to serve with")
	offsets := flag.Bool("print-offsets", false, "print where each router keeps its template (JSON) and exit")
	flag.Parse()
	if *offsets {
		printOffsets()
		return
	}
	mk, ok := routers[*name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown -router %q\n", *name)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, mk()))
}
