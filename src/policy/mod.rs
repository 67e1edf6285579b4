//! The route policy: which routes exist, which scopes each requires, and which path
//! parameter names the application. Loaded from TOML; every problem in a file is
//! reported at once, each naming its entry.

mod access;
mod router;

use crate::domain::Scope;
use access::LimitEntry;
pub use access::{Accepts, Access, LimitRule, LimitSubject, OnStoreError};
use router::Router;
use serde::Deserialize;
use std::path::Path;

/// The management API's routes, shipped with keygate and used when no file is given.
pub const DEFAULT_POLICY: &str = include_str!("../../policy/default.toml");

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
/// The path parameter that names the application unless a route says otherwise.
const DEFAULT_APPLICATION_PARAM: &str = "application_id";

#[derive(Debug)]
pub struct Route {
    /// "GET /api/v1/panel/applications/{application_id}", as written in the policy.
    pub template: std::sync::Arc<str>,
    /// Required of API keys; sessions act with their account's full rights, and runtime
    /// keys are bounded by the routes that accept them and their one application.
    pub scopes: Vec<Scope>,
    pub access: Access,
    pub limits: Vec<LimitRule>,
    /// Which path segment (0-based, after the leading '/') holds the application id.
    application_segment: Option<usize>,
}

/// A route matched against a request path.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'r, 'p> {
    pub route: &'r Route,
    /// The route's position in [`Policy::routes`].
    pub index: usize,
    /// The application id taken from the path, if the route names one.
    pub application_id: Option<&'p str>,
}

#[derive(Debug)]
pub struct Policy {
    routes: Vec<Route>,
    router: Router,
    /// Applies to every authenticated request.
    global_limit: Option<LimitRule>,
}

#[derive(Debug, thiserror::Error)]
#[error("policy {source_name} is invalid:{}", problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
pub struct PolicyError {
    pub source_name: String,
    pub problems: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    routes: Vec<RouteEntry>,
    global_limit: Option<LimitEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    route: String,
    #[serde(default)]
    scopes: Vec<String>,
    application_param: Option<String>,
    accepts: Option<Vec<String>>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    limits: Vec<LimitEntry>,
}

impl Policy {
    pub fn default_policy() -> Self {
        Self::from_toml(DEFAULT_POLICY, "(built-in default)").expect("the shipped default policy is valid")
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            source_name: source_name.clone(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Self::from_toml(&text, &source_name)
    }

    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let fail = |problems| PolicyError { source_name: source_name.to_owned(), problems };
        let file: PolicyFile = toml::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;
        if file.routes.is_empty() {
            return Err(fail(vec!["no [[routes]] entries: every request would be not_found".into()]));
        }
        let mut problems = Vec::new();
        let global_limit = match file.global_limit {
            None => None,
            Some(entry) => match entry.into_rule("global".into(), OnStoreError::Local) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    problems.push(format!("global_limit: {e}"));
                    None
                }
            },
        };
        let mut routes = Vec::with_capacity(file.routes.len());
        let mut router = Router::default();
        for (i, entry) in file.routes.into_iter().enumerate() {
            let name = format!("route #{} ({:?})", i + 1, entry.route);
            match parse_route(entry) {
                Ok((route, method, segments)) => {
                    if let Err(other) = router.insert(method, &segments, routes.len()) {
                        problems.push(format!(
                            "{name}: matches the same requests as {:?}",
                            routes.get(other).map(|r: &Route| &*r.template).unwrap_or("?")
                        ));
                    }
                    routes.push(route);
                }
                Err(errs) => problems.extend(errs.into_iter().map(|e| format!("{name}: {e}"))),
            }
        }
        if problems.is_empty() {
            Ok(Self { routes, router, global_limit })
        } else {
            Err(fail(problems))
        }
    }

    /// Finds the route for `method path`. `path` may carry a query string, which is ignored.
    pub fn match_route<'p>(&self, method: &str, path: &'p str) -> Option<RouteMatch<'_, 'p>> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let (index, segments) = self.router.find(method, path)?;
        let route = &self.routes[index];
        let application_id = route.application_segment.and_then(|s| segments.get(s).copied());
        Some(RouteMatch { route, index, application_id })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn global_limit(&self) -> Option<&LimitRule> {
        self.global_limit.as_ref()
    }
}

/// A template's segment: literal text or a named parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

fn parse_route(entry: RouteEntry) -> Result<(Route, &'static str, Vec<Segment>), Vec<String>> {
    let mut problems = Vec::new();
    let (method, path) = entry.route.trim().split_once(' ').unwrap_or(("", ""));
    let method = METHODS.iter().copied().find(|m| *m == method);
    if method.is_none() {
        problems.push(format!("route must be \"METHOD /path\" with METHOD one of {}", METHODS.join(", ")));
    }
    let segments = match parse_path(path.trim()) {
        Ok(segments) => segments,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    let scopes = entry
        .scopes
        .iter()
        .filter_map(|s| match Scope::parse_required(s) {
            Ok(scope) => Some(scope),
            Err(e) => {
                problems.push(e.problem);
                None
            }
        })
        .collect();
    let param_position = |name: &str| segments.iter().position(|s| *s == Segment::Param(name.to_owned()));
    let application_segment = match &entry.application_param {
        Some(name) => {
            let position = param_position(name);
            if position.is_none() {
                problems.push(format!("application_param {name:?} is not a parameter of the path"));
            }
            position
        }
        None => param_position(DEFAULT_APPLICATION_PARAM),
    };
    let access = match (entry.public, &entry.accepts) {
        (true, Some(_)) => {
            problems.push("a public route accepts no credentials: drop accepts or public".into());
            Access::Public
        }
        (true, None) => Access::Public,
        (false, None) => Access::Credentials(Accepts::API_KEY),
        (false, Some(names)) => Accepts::parse(names).map(Access::Credentials).unwrap_or_else(|e| {
            problems.push(e);
            Access::Public
        }),
    };
    let template = format!("{} {}", method.unwrap_or("?"), path.trim());
    let mut limits = Vec::new();
    for (i, limit) in entry.limits.into_iter().enumerate() {
        match limit.into_rule(format!("{template}#{i}"), OnStoreError::Closed) {
            Ok(rule) => limits.push(rule),
            Err(e) => problems.push(format!("limits[{i}]: {e}")),
        }
    }
    match method {
        Some(method) if problems.is_empty() => {
            Ok((Route { template: template.into(), scopes, access, limits, application_segment }, method, segments))
        }
        _ => Err(problems),
    }
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must start with '/'".into());
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let segment = if let Some(name) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(format!("parameter {raw:?} must be {{name}} with lowercase letters, digits or '_'"));
            }
            if segments.contains(&Segment::Param(name.to_owned())) {
                return Err(format!("parameter {raw:?} appears twice"));
            }
            Segment::Param(name.to_owned())
        } else if raw.is_empty() || raw.contains(['{', '}', '?', '#', ' ']) {
            return Err(format!("segment {raw:?} is empty or has a character a path segment cannot have"));
        } else {
            Segment::Literal(raw.to_owned())
        };
        segments.push(segment);
    }
    if segments.len() > router::MAX_SEGMENTS {
        return Err(format!("the path has more than {} segments", router::MAX_SEGMENTS));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::from_toml(text, "test").unwrap()
    }

    #[test]
    fn the_default_policy_loads_and_matches_the_page_routes() {
        let p = Policy::default_policy();
        let m = p.match_route("GET", "/api/v1/panel/applications/app_123").unwrap();
        assert_eq!(&*m.route.template, "GET /api/v1/panel/applications/{application_id}");
        assert_eq!(m.application_id, Some("app_123"));
        assert!(p.match_route("POST", "/api/v1/panel/api-keys").is_some());
        assert!(p.match_route("PATCH", "/api/v1/panel/update-api-keys").is_some());
        assert!(p.match_route("GET", "/nope").is_none());
    }

    #[test]
    fn literals_win_over_parameters_and_backtrack() {
        let p = policy(
            r#"
            [[routes]]
            route = "GET /apps/{application_id}/users"
            [[routes]]
            route = "GET /apps/mine/settings"
            [[routes]]
            route = "GET /apps/mine"
            "#,
        );
        assert_eq!(&*p.match_route("GET", "/apps/mine").unwrap().route.template, "GET /apps/mine");
        // "mine" is tried as a literal first, then as the parameter.
        let m = p.match_route("GET", "/apps/mine/users").unwrap();
        assert_eq!(&*m.route.template, "GET /apps/{application_id}/users");
        assert_eq!(m.application_id, Some("mine"));
        assert!(p.match_route("GET", "/apps//users").is_none());
        assert!(p.match_route("get", "/apps/mine?x=1").is_some());
        assert!(p.match_route("POST", "/apps/mine").is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_entry() {
        let err = Policy::from_toml(
            r#"
            [[routes]]
            route = "FETCH /a"
            [[routes]]
            route = "GET /b/{x}"
            scopes = ["b:*"]
            application_param = "y"
            [[routes]]
            route = "GET /c/{id}"
            [[routes]]
            route = "GET /c/{other}"
            "#,
            "test",
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        assert!(text.contains("route #1"), "{text}");
        assert!(text.contains("route #2") && text.contains("\"y\""), "{text}");
        assert!(text.contains("route #4") && text.contains("GET /c/{id}"), "{text}");
    }

    #[test]
    fn unknown_fields_and_empty_files_are_rejected() {
        assert!(Policy::from_toml("[[routes]]\nroute = \"GET /\"\nscope = []", "t").is_err());
        assert!(Policy::from_toml("", "t").is_err());
    }
}
