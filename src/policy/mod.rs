//! The route policy: which routes exist, which scopes each requires, and where each
//! route's request names its application. Loaded from TOML; every problem in a file is
//! reported at once, each naming its entry.

mod access;
mod application;
mod router;

use crate::domain::Scope;
use access::LimitEntry;
pub use access::{Accepts, Access, LimitKind, LimitRule, LimitSubject, OnStoreError};
pub use application::{named_application, ApplicationSource, NamedApplication, RequestHeaders, RequestParts};
use router::Router;
use serde::Deserialize;
use std::path::Path;

/// The management API's routes, shipped with keygate and used when no file is given.
pub const DEFAULT_POLICY: &str = include_str!("../../policy/default.toml");

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
/// The path parameter that names the application unless a route says otherwise.
const DEFAULT_APPLICATION_PARAM: &str = "application_id";
/// The most credits one call of a route may cost (as for a request's own `cost`).
pub const MAX_ROUTE_COST: u32 = 1000;

#[derive(Debug)]
pub struct Route {
    /// "GET /api/v1/panel/applications/{application_id}", as written in the policy.
    pub template: std::sync::Arc<str>,
    /// Required of API keys; sessions act with their account's full rights, and runtime
    /// keys are bounded by the routes that accept them and their one application.
    pub scopes: Vec<Scope>,
    pub access: Access,
    pub limits: Vec<LimitRule>,
    /// Where a request names the application it acts on, in the order they are read.
    /// Every source present must name the same one.
    pub application: Vec<ApplicationSource>,
    /// The route cannot be decided without an application: it names a source, or counts
    /// a limit per application. A request without one is a bad request, never unlimited.
    pub needs_application: bool,
    /// Credits a call spends on a key that carries credits (the request may say otherwise).
    pub cost: u32,
}

/// A route matched against a request path.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'r, 'p> {
    pub route: &'r Route,
    /// The route's position in [`Policy::routes`].
    pub index: usize,
    /// The application id taken from the path, if the route reads it there.
    pub path_application: Option<&'p str>,
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
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    route: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// Shorthand for `application = "path:NAME"`.
    application_param: Option<String>,
    /// "path:NAME", "query:NAME", "header:NAME" or "body:FIELD", or a list of them.
    application: Option<OneOrMany>,
    accepts: Option<Vec<String>>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    limits: Vec<LimitEntry>,
    /// Credits a call spends on a key that carries them (default 1).
    cost: Option<u32>,
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
                Ok(rule) if rule.per == LimitSubject::Application => {
                    problems.push(
                        "global_limit: cannot count per application (not every route names one); \
                         put the limit on the routes that do"
                            .into(),
                    );
                    None
                }
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

    /// Finds the route for `method path`, where `path` is a path that
    /// [`keygate_api::edge::request_target`] accepted (without its query).
    pub fn match_route<'p>(&self, method: &str, path: &'p str) -> Option<RouteMatch<'_, 'p>> {
        let (index, segments) = self.router.find(method, path)?;
        let route = &self.routes[index];
        let path_application = route.application.iter().find_map(|source| match source {
            ApplicationSource::Path { segment, .. } => segments.get(*segment).copied(),
            _ => None,
        });
        Some(RouteMatch { route, index, path_application })
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
    let written: Vec<String> = match (entry.application_param, entry.application) {
        (Some(_), Some(_)) => {
            problems.push("give the application's source once: application or application_param".into());
            Vec::new()
        }
        (Some(name), None) => vec![format!("path:{name}")],
        (None, Some(OneOrMany::One(source))) => vec![source],
        (None, Some(OneOrMany::Many(sources))) => sources,
        // The parameter named application_id names the application unless a route says otherwise.
        (None, None) if param_position(DEFAULT_APPLICATION_PARAM).is_some() => {
            vec![format!("path:{DEFAULT_APPLICATION_PARAM}")]
        }
        (None, None) => Vec::new(),
    };
    let mut application = Vec::new();
    for raw in &written {
        match ApplicationSource::parse(raw, param_position) {
            Ok(source) if application.contains(&source) => {
                problems.push(format!("application source {raw:?} appears twice"))
            }
            Ok(source) => application.push(source),
            Err(e) => problems.push(e),
        }
    }
    if application.iter().filter(|s| matches!(s, ApplicationSource::Path { .. })).count() > 1 {
        problems.push("at most one application source can be a path parameter".into());
    }
    // A path that names an application must be read: otherwise `/apps/{application_id}`
    // could act on one application while the request names another elsewhere.
    if param_position(DEFAULT_APPLICATION_PARAM).is_some()
        && !application.iter().any(|s| matches!(s, ApplicationSource::Path { .. }))
        && !written.is_empty()
    {
        problems.push(format!(
            "the path has {{{DEFAULT_APPLICATION_PARAM}}}: list \"path:{DEFAULT_APPLICATION_PARAM}\" among its application sources"
        ));
    }
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
    // A limit whose subject a request may lack is a start-up error, not a skip.
    for (i, limit) in limits.iter().enumerate() {
        match limit.per {
            LimitSubject::Application if application.is_empty() => problems.push(format!(
                "limits[{i}]: counts per application, but the route names no application source \
                 (application = \"path:…\", \"query:…\", \"header:…\" or \"body:…\")"
            )),
            LimitSubject::Account | LimitSubject::Credential if access == Access::Public => problems.push(format!(
                "limits[{i}]: a public route has no caller to count per {}; count per ip",
                limit.per.as_str()
            )),
            _ => {}
        }
    }
    let needs_application = !application.is_empty() || limits.iter().any(|l| l.per == LimitSubject::Application);
    let cost = entry.cost.unwrap_or(1);
    if cost > MAX_ROUTE_COST {
        problems.push(format!("cost: at most {MAX_ROUTE_COST}"));
    }
    match method {
        Some(method) if problems.is_empty() => Ok((
            Route { template: template.into(), scopes, access, limits, application, needs_application, cost },
            method,
            segments,
        )),
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
        assert_eq!(m.path_application, Some("app_123"));
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
        assert_eq!(m.path_application, Some("mine"));
        assert!(p.match_route("GET", "/apps//users").is_none());
        assert!(p.match_route("get", "/apps/mine").is_some());
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

    #[test]
    fn a_limit_whose_subject_a_request_may_lack_is_refused_at_load() {
        let per_application = r#"
            [[routes]]
            route = "PATCH /rotate"
            [[routes.limits]]
            limit = 2
            window = "hour"
            per = "application"
        "#;
        let err = Policy::from_toml(per_application, "t").unwrap_err().to_string();
        assert!(err.contains("counts per application") && err.contains("no application source"), "{err}");
        let global =
            "[global_limit]\nlimit = 5\nwindow = \"minute\"\nper = \"application\"\n[[routes]]\nroute = \"GET /a\"\n";
        assert!(Policy::from_toml(global, "t").unwrap_err().to_string().contains("global_limit"));
        let public =
            "[[routes]]\nroute = \"GET /a\"\npublic = true\n[[routes.limits]]\nlimit = 5\nwindow = \"minute\"\n";
        assert!(Policy::from_toml(public, "t").unwrap_err().to_string().contains("public route"));
    }

    #[test]
    fn routes_name_where_their_application_comes_from() {
        let p = policy(
            r#"
            [[routes]]
            route = "PATCH /rotate"
            application = ["body:application_id", "query:application_id", "header:X-Application-Id"]
            [[routes.limits]]
            limit = 2
            window = "hour"
            per = "application"
            [[routes]]
            route = "GET /apps/{id}/logs"
            application_param = "id"
            [[routes]]
            route = "GET /apps"
            "#,
        );
        let rotate = p.match_route("PATCH", "/rotate").unwrap().route;
        assert!(rotate.needs_application);
        assert_eq!(rotate.application[2], ApplicationSource::Header("x-application-id".into()));
        let logs = p.match_route("GET", "/apps/app_1/logs").unwrap();
        assert_eq!(logs.path_application, Some("app_1"));
        assert!(logs.route.needs_application);
        assert!(!p.match_route("GET", "/apps").unwrap().route.needs_application);
        // The default policy's rotation route reads the application from each source
        // forward-auth proxies, Envoy and the layer can send.
        let default = Policy::default_policy();
        let rotate = default.match_route("PATCH", "/api/v1/panel/update-api-keys").unwrap().route;
        assert!(rotate.needs_application && rotate.application.len() == 3);
        let both = "[[routes]]\nroute = \"GET /a/{x}\"\napplication_param = \"x\"\napplication = \"query:x\"\n";
        assert!(Policy::from_toml(both, "t").unwrap_err().to_string().contains("once"));
        let unread = "[[routes]]\nroute = \"GET /a/{application_id}\"\napplication = \"header:x-app\"\n";
        assert!(Policy::from_toml(unread, "t").unwrap_err().to_string().contains("path:application_id"));
    }
}
