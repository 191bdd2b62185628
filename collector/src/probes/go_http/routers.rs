//! Route templates of Go routers (gin, echo v4/v5, chi v1/v5, gorilla/mux): which function
//! to probe in a binary that links one, and where its template is there (a
//! `collector_common::router::RouterSpec`).
//!
//! One uprobe per request and router (chi: per mux level a request passes), only in binaries
//! that link the router, only in the net/http uprobe mode: the requests are the net/http
//! probes' (joined by goroutine, `collector-ebpf/src/router.rs`), so the socket parser's
//! records keep their normalised paths.
//!
//! | router | probe | template |
//! |---|---|---|
//! | gin ≥ 1.7 | RETs of `(*node).getValue` | its result's `fullPath` (R8, R9), when handlers matched (RAX) — what `Context.FullPath` returns |
//! | gorilla/mux | entry of `requestWithRoute(r, route)` | `route.regexp.path.template` (`GetPathTemplate`) |
//! | chi v1, v5 | entry of `(*node).FindRoute(rctx, …)` | `rctx.RoutePatterns` joined as `RoutePattern` does, read at the request's end |
//! | echo v4 | entry of `(*Router).Find(method, path, c)` | `c.path` (`Context.Path`), read at the request's end |
//! | echo v5 | entry of `(*DefaultRouter).Route(c)` | `c.path`, read at the request's end |
//!
//! Offsets from DWARF when the binary has it, else the committed row of the router's minor
//! version (`routers_table.json`, printed by `tests/go/routers/server -print-offsets`, which
//! finds them by reflection on the router's own types); the version comes from the build info.
//! A router whose offsets are unknown is not probed (its requests keep their paths), never
//! guessed.

use std::sync::OnceLock;

use collector_common::router::{GO_REGS, NO_DEREF, RouterSpec, kind};
use serde::Deserialize;

use super::{
    GoBinary,
    offsets::{StructInfo, dwarf_structs},
};

const TABLE_JSON: &str = include_str!("routers_table.json");

/// Where a router's probe goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Entry,
    Returns,
}

/// One supported router.
#[derive(Debug)]
pub struct Router {
    /// Label in logs and the API.
    pub name: &'static str,
    /// Module path in the build info.
    pub module: &'static str,
    pub function: &'static str,
    pub point: Point,
    recipe: Recipe,
}

#[derive(Debug)]
enum Recipe {
    /// gin: the template is a result in registers; nothing to look up.
    GinResult,
    /// gorilla/mux: `*Route` in RBX; `Route.routeConf.regexp.path` → `routeRegexp.template`.
    Gorilla,
    /// chi: `*Context` in RBX; `RoutePatterns`, identity `parentCtx`'s data word.
    Chi { context: &'static str },
    /// echo: the context in `reg`; `path`, identity `request`.
    Echo { context: &'static str, reg: u32 },
}

pub const ROUTERS: [Router; 6] = [
    Router {
        name: "gin",
        module: "github.com/gin-gonic/gin",
        function: "github.com/gin-gonic/gin.(*node).getValue",
        point: Point::Returns,
        recipe: Recipe::GinResult,
    },
    Router {
        name: "gorilla/mux",
        module: "github.com/gorilla/mux",
        function: "github.com/gorilla/mux.requestWithRoute",
        point: Point::Entry,
        recipe: Recipe::Gorilla,
    },
    Router {
        name: "chi/v5",
        module: "github.com/go-chi/chi/v5",
        function: "github.com/go-chi/chi/v5.(*node).FindRoute",
        point: Point::Entry,
        recipe: Recipe::Chi {
            context: "github.com/go-chi/chi/v5.Context",
        },
    },
    Router {
        name: "chi",
        module: "github.com/go-chi/chi",
        function: "github.com/go-chi/chi.(*node).FindRoute",
        point: Point::Entry,
        recipe: Recipe::Chi {
            context: "github.com/go-chi/chi.Context",
        },
    },
    Router {
        name: "echo/v4",
        module: "github.com/labstack/echo/v4",
        function: "github.com/labstack/echo/v4.(*Router).Find",
        point: Point::Entry,
        // Find(method, path string, c Context): c's data word follows RAX, 2 × 2 strings, itab.
        recipe: Recipe::Echo {
            context: "github.com/labstack/echo/v4.context",
            reg: 6,
        },
    },
    Router {
        name: "echo/v5",
        module: "github.com/labstack/echo/v5",
        function: "github.com/labstack/echo/v5.(*DefaultRouter).Route",
        point: Point::Entry,
        recipe: Recipe::Echo {
            context: "github.com/labstack/echo/v5.Context",
            reg: 1,
        },
    },
];

const GORILLA_ROUTE: &str = "github.com/gorilla/mux.Route";
const GORILLA_CONF: &str = "github.com/gorilla/mux.routeConf";
const GORILLA_GROUP: &str = "github.com/gorilla/mux.routeRegexpGroup";
const GORILLA_REGEXP: &str = "github.com/gorilla/mux.routeRegexp";
const GIN_NODE_VALUE: &str = "github.com/gin-gonic/gin.nodeValue";

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("DWARF: {0}")]
    Dwarf(#[from] super::OffsetsError),
    #[error("DWARF layout: {0}")]
    Layout(String),
    #[error("no {0} in the build info's dependencies")]
    NoVersion(&'static str),
    #[error(
        "no offsets for {module} {version} (the table covers {covered}); build with DWARF or regenerate the table"
    )]
    NotInTable {
        module: &'static str,
        version: String,
        covered: String,
    },
    #[error("{module} {version}: older than the layout probed (gin ≥ v1.7)")]
    TooOld {
        module: &'static str,
        version: String,
    },
    #[error("offsets table: {0}")]
    Table(String),
}

/// Where a router's spec came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Dwarf,
    Table {
        version: String,
    },
    /// No offsets needed (gin): the version was checked.
    Version {
        version: String,
    },
}

/// Routers `bin` links (their probed function is there).
pub fn present(bin: &GoBinary) -> impl Iterator<Item = &'static Router> + '_ {
    ROUTERS
        .iter()
        .filter(|r| bin.function(r.function).is_some())
}

/// The module version `bin` was built with.
pub fn version<'b>(bin: &'b GoBinary, module: &str) -> Option<&'b str> {
    bin.deps
        .iter()
        .find(|(p, _)| p == module)
        .map(|(_, v)| v.as_str())
}

/// The spec of `router` in `bin` (`valid` left 0 for the caller to fill).
pub fn spec_for(bin: &GoBinary, router: &Router) -> Result<(RouterSpec, Source), RouterError> {
    if let Some(spec) = from_dwarf(bin, router)? {
        return Ok((spec, Source::Dwarf));
    }
    let v = version(bin, router.module).ok_or(RouterError::NoVersion(router.module))?;
    if let Recipe::GinResult = router.recipe {
        return gin_by_version(v).map(|s| {
            (
                s,
                Source::Version {
                    version: v.to_owned(),
                },
            )
        });
    }
    let row = table_row(router.module, v)?;
    let spec = match router.recipe {
        Recipe::GinResult => unreachable!("handled above"),
        Recipe::Gorilla => deref_spec(row.deref.unwrap_or(NO_DEREF), row.string),
        Recipe::Chi { .. } => deferred(kind::DEFERRED_JOIN, 1, row.string, row.identity),
        Recipe::Echo { reg, .. } => deferred(kind::DEFERRED, reg, row.string, row.identity),
    }?;
    Ok((
        spec,
        Source::Table {
            version: v.to_owned(),
        },
    ))
}

/// gin's `nodeValue{handlers HandlersChain; params *Params; tsr bool; fullPath string}`
/// (since v1.7) comes back in RAX, RBX, RCX (handlers), RDI, RSI, then R8, R9 (fullPath).
fn gin_spec() -> RouterSpec {
    RouterSpec {
        kind: kind::REGS,
        reg_base: reg("r8"),
        reg_len: reg("r9"),
        reg_guard: reg("rax"),
        deref: NO_DEREF,
        string: 0,
        identity: 0,
        valid: 0,
    }
}

fn gin_by_version(v: &str) -> Result<RouterSpec, RouterError> {
    let too_old = || RouterError::TooOld {
        module: "github.com/gin-gonic/gin",
        version: v.to_owned(),
    };
    let minor = minor(v).ok_or_else(too_old)?;
    let (major, minor) = minor[1..].split_once('.').ok_or_else(too_old)?;
    match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(1), Ok(m)) if m >= 7 => Ok(gin_spec()),
        _ => Err(too_old()),
    }
}

fn reg(name: &str) -> u32 {
    GO_REGS.iter().position(|r| *r == name).unwrap_or(0) as u32
}

fn deref_spec(deref: u32, string: u32) -> Result<RouterSpec, RouterError> {
    Ok(RouterSpec {
        kind: kind::DEREF,
        reg_base: reg("rbx"),
        reg_len: 0,
        reg_guard: u32::MAX,
        deref,
        string,
        identity: 0,
        valid: 0,
    })
}

fn deferred(
    k: u32,
    reg_base: u32,
    string: u32,
    identity: Option<u32>,
) -> Result<RouterSpec, RouterError> {
    let identity =
        identity.ok_or_else(|| RouterError::Table("row without an identity offset".into()))?;
    Ok(RouterSpec {
        kind: k,
        reg_base,
        reg_len: 0,
        reg_guard: u32::MAX,
        deref: NO_DEREF,
        string,
        identity,
        valid: 0,
    })
}

fn member(s: &StructInfo, name: &str, ty: &str) -> Result<u32, RouterError> {
    let m = s
        .members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| RouterError::Layout(format!("{} has no member {name}", s.name)))?;
    if m.type_name != ty {
        return Err(RouterError::Layout(format!(
            "{}.{name} is {}, expected {ty}",
            s.name, m.type_name
        )));
    }
    u32::try_from(m.offset)
        .map_err(|_| RouterError::Layout(format!("{}.{name} offset too large", s.name)))
}

fn from_dwarf(bin: &GoBinary, router: &Router) -> Result<Option<RouterSpec>, RouterError> {
    let id = (bin.dev, bin.ino);
    match router.recipe {
        Recipe::GinResult => {
            let Some(found) =
                dwarf_structs(&bin.path, id, &[(GIN_NODE_VALUE, &["params", "fullPath"])])?
            else {
                return Ok(None);
            };
            let nv = &found[0];
            // The layout whose results land in R8, R9 (see `gin_spec`).
            let params = member(nv, "params", "*github.com/gin-gonic/gin.Params")?;
            let full = member(nv, "fullPath", "string")?;
            if (params, full) != (24, 40) {
                return Err(RouterError::Layout(format!(
                    "{GIN_NODE_VALUE}: params at {params}, fullPath at {full}; expected 24, 40"
                )));
            }
            Ok(Some(gin_spec()))
        }
        Recipe::Gorilla => {
            let Some(found) = dwarf_structs(
                &bin.path,
                id,
                &[
                    (GORILLA_ROUTE, &["routeConf"]),
                    (GORILLA_CONF, &["regexp"]),
                    (GORILLA_GROUP, &["path"]),
                    (GORILLA_REGEXP, &["template"]),
                ],
            )?
            else {
                return Ok(None);
            };
            let conf = member(&found[0], "routeConf", GORILLA_CONF)?;
            let group = member(&found[1], "regexp", GORILLA_GROUP)?;
            let path = member(&found[2], "path", &format!("*{GORILLA_REGEXP}"))?;
            let template = member(&found[3], "template", "string")?;
            deref_spec(conf + group + path, template).map(Some)
        }
        Recipe::Chi { context } => {
            let Some(found) =
                dwarf_structs(&bin.path, id, &[(context, &["parentCtx", "RoutePatterns"])])?
            else {
                return Ok(None);
            };
            let parent = member(&found[0], "parentCtx", "context.Context")?;
            let patterns = member(&found[0], "RoutePatterns", "[]string")?;
            deferred(kind::DEFERRED_JOIN, reg("rbx"), patterns, Some(parent + 8)).map(Some)
        }
        Recipe::Echo { context, reg } => {
            let Some(found) = dwarf_structs(&bin.path, id, &[(context, &["request", "path"])])?
            else {
                return Ok(None);
            };
            let request = member(&found[0], "request", "*net/http.Request")?;
            let path = member(&found[0], "path", "string")?;
            deferred(kind::DEFERRED, reg, path, Some(request)).map(Some)
        }
    }
}

/// One row of `routers_table.json`: what `tests/go/routers/server -print-offsets` printed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRow {
    pub module: String,
    pub minor: String,
    pub version: String,
    pub go: String,
    pub deref: Option<u32>,
    pub string: u32,
    pub identity: Option<u32>,
}

pub fn table() -> Result<&'static [TableRow], RouterError> {
    static TABLE: OnceLock<Result<Vec<TableRow>, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| serde_json::from_str(TABLE_JSON).map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| RouterError::Table(e.clone()))
}

/// `v1.8.1` → `v1.8`.
pub fn minor(version: &str) -> Option<&str> {
    crate::probes::go_grpc::offsets::minor(version)
}

fn table_row(module: &'static str, version: &str) -> Result<&'static TableRow, RouterError> {
    let rows = table()?;
    let not_in = || RouterError::NotInTable {
        module,
        version: version.to_owned(),
        covered: rows
            .iter()
            .filter(|r| r.module == module)
            .map(|r| r.minor.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let m = minor(version).ok_or_else(not_in)?;
    rows.iter()
        .find(|r| r.module == module && r.minor == m)
        .ok_or_else(not_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_tested_router_version() {
        let sets = include_str!("../../../../tests/go/routers/versions");
        let mut checked = 0;
        for line in sets
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            for m in line.split_whitespace().skip(3) {
                let (module, v) = m.split_once('@').expect("module@version");
                let router = ROUTERS
                    .iter()
                    .find(|r| r.module == module)
                    .unwrap_or_else(|| panic!("{module} is not a router we probe"));
                if let Recipe::GinResult = router.recipe {
                    assert!(gin_by_version(v).is_ok(), "{m}");
                } else {
                    assert!(table_row(router.module, v).is_ok(), "{m} not in the table");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 16, "router modules in tests/go/routers/versions");
        assert!(matches!(
            table_row("github.com/gorilla/mux", "v1.6.2"),
            Err(RouterError::NotInTable { .. })
        ));
    }

    #[test]
    fn gin_before_1_7_is_refused() {
        // gin 1.6's nodeValue had `params Params` (a slice): fullPath came back in R10, R11.
        assert!(matches!(
            gin_by_version("v1.6.3"),
            Err(RouterError::TooOld { .. })
        ));
        assert_eq!(gin_by_version("v1.7.7").expect("1.7").reg_base, 5);
        assert_eq!(gin_by_version("v1.12.0").expect("1.12").reg_len, 6);
        assert!(gin_by_version("v2.0.0").is_err());
    }
}
