package main

import (
	"encoding/json"
	"os"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/gin-gonic/gin"
	chi1 "github.com/go-chi/chi"
	"github.com/go-chi/chi/v5"
	"github.com/gorilla/mux"
	echo4 "github.com/labstack/echo/v4"
)

// offsetRow is one row of collector/src/probes/go_http/routers_table.json: where a router
// version keeps its template, found by reflection on its own types (unexported fields
// included), for binaries without DWARF.
type offsetRow struct {
	Module   string   `json:"module"`
	Version  string   `json:"version"`
	Go       string   `json:"go"`
	Deref    *uintptr `json:"deref"`
	String   uintptr  `json:"string"`
	Identity *uintptr `json:"identity"`
}

// Rows of the routers this binary has; echo5.go adds its own.
var offsetRows = []func() offsetRow{
	func() offsetRow {
		// gin's template is a result in registers (no offsets): the row records the version.
		_ = gin.New
		return offsetRow{Module: "github.com/gin-gonic/gin"}
	},
	func() offsetRow {
		route := reflect.TypeOf(mux.Route{})
		conf, _ := route.FieldByName("routeConf")
		group, _ := conf.Type.FieldByName("regexp")
		path, _ := group.Type.FieldByName("path")
		tpl, _ := path.Type.Elem().FieldByName("template")
		d := conf.Offset + group.Offset + path.Offset
		return offsetRow{Module: "github.com/gorilla/mux", Deref: &d, String: tpl.Offset}
	},
	func() offsetRow { return chiRow("github.com/go-chi/chi/v5", reflect.TypeOf(chi.Context{})) },
	func() offsetRow { return chiRow("github.com/go-chi/chi", reflect.TypeOf(chi1.Context{})) },
	func() offsetRow {
		c := reflect.TypeOf(echo4.New().NewContext(nil, nil)).Elem()
		return echoRow("github.com/labstack/echo/v4", c)
	},
}

func chiRow(module string, c reflect.Type) offsetRow {
	parent, _ := c.FieldByName("parentCtx")
	patterns, _ := c.FieldByName("RoutePatterns")
	// The interface's data word: what the next request's context differs in.
	id := parent.Offset + 8
	return offsetRow{Module: module, String: patterns.Offset, Identity: &id}
}

func echoRow(module string, c reflect.Type) offsetRow {
	req, _ := c.FieldByName("request")
	path, _ := c.FieldByName("path")
	id := req.Offset
	return offsetRow{Module: module, String: path.Offset, Identity: &id}
}

func printOffsets() {
	info, _ := debug.ReadBuildInfo()
	version := map[string]string{}
	for _, d := range info.Deps {
		version[d.Path] = d.Version
	}
	var rows []offsetRow
	for _, f := range offsetRows {
		r := f()
		r.Version = version[r.Module]
		r.Go = strings.TrimPrefix(runtime.Version(), "go")
		rows = append(rows, r)
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(rows); err != nil {
		panic(err)
	}
}
