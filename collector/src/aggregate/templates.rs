//! Route templates learned from a Go server's router (or ServeMux) in short uprobe windows
//! (`--go-http-uprobes auto`), matched against the paths the socket parser reads, so a
//! plaintext request is counted under `/items/:id` as the uprobes would count it, without a
//! trap per request.
//!
//! Why a segment tree rather than one regex per template: every parser record of a workload
//! that learned templates is matched (up to a few hundred thousand per second here), and a
//! walk of the path's segments costs the same whatever the number of templates, while trying
//! the templates one after another grows with them. The walk prefers, segment by segment, a
//! literal to a parameter to a catch-all: the order gin, echo, chi, gorilla/mux and ServeMux
//! all route by, so the template found is the one the router would have matched.

use std::collections::HashMap;

/// The templates of one workload.
#[derive(Debug, Default)]
pub struct Templates {
    root: Node,
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<String, Node>,
    /// One segment, whatever it holds (`:id`, `{id}`, `{id:[0-9]+}`, `{id}.json`).
    param: Option<Box<Node>>,
    /// The template ending here with a catch-all (`*path`, `*`, `{path...}`, ServeMux's
    /// trailing `/`): matches one or more remaining segments.
    rest: Option<String>,
    /// The template ending exactly here.
    end: Option<String>,
}

/// What one segment of a template is.
enum Segment<'a> {
    Literal(&'a str),
    Param,
    Rest,
}

fn segment(s: &str, mux: bool) -> Segment<'_> {
    if s.starts_with('*') || (s.starts_with('{') && s.ends_with("...}")) {
        Segment::Rest
    } else if mux && s == "{$}" {
        // ServeMux's "ends here": the path's own trailing `/` (an empty segment).
        Segment::Literal("")
    } else if s.starts_with(':') || s.contains('{') {
        Segment::Param
    } else {
        Segment::Literal(s)
    }
}

impl Templates {
    /// How many templates are kept.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `template` (its path part: `/items/:id`); `mux`: ServeMux's pattern, whose
    /// trailing `/` matches a subtree. False when it was known already or is no path.
    pub fn insert(&mut self, template: &str, mux: bool) -> bool {
        let Some(path) = template.strip_prefix('/') else {
            return false;
        };
        let mut node = &mut self.root;
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            if last && mux && part.is_empty() && !path.is_empty() {
                // `/static/`: the subtree below `/static`.
                return Self::set(&mut node.rest, template, &mut self.len);
            }
            if path.is_empty() {
                // `/`: a router's root, or ServeMux's `/`, which matches every path.
                if mux {
                    let added = Self::set(&mut node.rest, template, &mut self.len);
                    // The root itself as well (a catch-all needs one segment).
                    let child = node.literal.entry(String::new()).or_default();
                    return Self::set(&mut child.end, template, &mut 0) || added;
                }
                let child = node.literal.entry(String::new()).or_default();
                return Self::set(&mut child.end, template, &mut self.len);
            }
            node = match segment(part, mux) {
                Segment::Rest => return Self::set(&mut node.rest, template, &mut self.len),
                Segment::Param => node.param.get_or_insert_with(Box::default),
                Segment::Literal(s) => node.literal.entry(s.to_string()).or_default(),
            };
            if last {
                return Self::set(&mut node.end, template, &mut self.len);
            }
        }
        false
    }

    /// The first template wins a place (a router matches one template per shape).
    fn set(at: &mut Option<String>, template: &str, len: &mut usize) -> bool {
        if at.is_some() {
            return false;
        }
        *at = Some(template.to_string());
        *len += 1;
        true
    }

    /// The template the router would have matched for `path` (a request target's path).
    pub fn matching(&self, path: &str) -> Option<&str> {
        Self::walk(&self.root, Some(path.strip_prefix('/')?))
    }

    /// `rest`: the path's segments not matched yet, `/`-separated (None: all matched). Walked
    /// on the string itself: a path is matched per record, without an allocation.
    fn walk<'a>(node: &'a Node, rest: Option<&str>) -> Option<&'a str> {
        let Some(rest) = rest else {
            return node.end.as_deref();
        };
        let (first, more) = match rest.split_once('/') {
            Some((first, more)) => (first, Some(more)),
            None => (rest, None),
        };
        if let Some(child) = node.literal.get(first)
            && let Some(t) = Self::walk(child, more)
        {
            return Some(t);
        }
        if !first.is_empty()
            && let Some(child) = &node.param
            && let Some(t) = Self::walk(child, more)
        {
            return Some(t);
        }
        node.rest.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(templates: &[&str], mux: bool) -> Templates {
        let mut t = Templates::default();
        for s in templates {
            t.insert(s, mux);
        }
        t
    }

    /// Catches: a parameter taking precedence over a literal (`/items/new` counted under
    /// `/items/:id`), a catch-all matching nothing or everything, a parameter matching an
    /// empty segment, a template matched on a prefix of the path.
    #[test]
    fn paths_find_the_template_their_router_matches() {
        let t = set(
            &[
                "/items/:id",
                "/items/new",
                "/items/:id/parts/:part",
                "/files/*filepath",
                "/",
                "/users/{id:[0-9]+}",
                "/docs/{name}.json",
            ],
            false,
        );
        let cases = [
            ("/items/42", Some("/items/:id")),
            ("/items/new", Some("/items/new")),
            ("/items/7/parts/9", Some("/items/:id/parts/:part")),
            ("/items/7/parts", None),
            ("/items/", None),
            ("/items", None),
            ("/files/a/b/c.txt", Some("/files/*filepath")),
            ("/files/", Some("/files/*filepath")),
            ("/files", None),
            ("/", Some("/")),
            ("/users/12", Some("/users/{id:[0-9]+}")),
            ("/docs/intro.json", Some("/docs/{name}.json")),
            ("/other", None),
            ("", None),
        ];
        for (path, want) in cases {
            assert_eq!(t.matching(path), want, "{path}");
        }
        assert_eq!(t.len(), 7);
    }

    /// Catches: ServeMux's trailing `/` and `/` taken as exact (its subtrees normalised),
    /// `{path...}` as one segment, `{$}` ignored.
    #[test]
    fn servemux_patterns_match_their_subtrees() {
        let t = set(
            &["/", "/static/", "/api/{id}", "/b/{p...}", "/exact/{$}"],
            true,
        );
        let cases = [
            ("/", Some("/")),
            ("/anything/else", Some("/")),
            ("/static/css/a.css", Some("/static/")),
            ("/static/", Some("/static/")),
            ("/api/3", Some("/api/{id}")),
            ("/api/3/4", Some("/")),
            ("/b/x/y", Some("/b/{p...}")),
            ("/exact/", Some("/exact/{$}")),
            ("/exact/more", Some("/")),
        ];
        for (path, want) in cases {
            assert_eq!(t.matching(path), want, "{path}");
        }
    }

    /// Catches: a template counted twice, or the second of one shape replacing the first.
    #[test]
    fn a_shape_keeps_its_first_template() {
        let mut t = Templates::default();
        assert!(t.insert("/items/:id", false));
        assert!(!t.insert("/items/:id", false));
        assert!(!t.insert("/items/:item", false));
        assert!(!t.insert("items", false));
        assert_eq!(t.len(), 1);
        assert_eq!(t.matching("/items/1"), Some("/items/:id"));
    }
}
