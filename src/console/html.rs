//! HTML by hand: every value from a record or a request goes through [`esc`] (or [`attr`]),
//! the page layout, and the usage chart as server-rendered SVG. No template engine: the
//! pages are few and small, and this adds nothing to the build (docs/development.md).

use crate::store::usage::UsageCount;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use std::fmt::Write;

/// `text` safe between tags and inside double-quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one component of a URL's path or query.
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Who is signed in, for the header of every page.
pub struct Viewer<'a> {
    pub credential: &'a str,
    pub role: &'a str,
    pub account: Option<&'a str>,
    pub csrf: &'a str,
    pub admin: bool,
}

/// A whole page: `body` is HTML already escaped where needed.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> Response {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · keygate console</title><link rel=\"stylesheet\" href=\"/static/console.css\">\
         <script src=\"/static/console.js\" defer></script></head><body>",
        esc(title)
    );
    out.push_str("<header><a class=\"brand\" href=\"/\">keygate console</a>");
    if let Some(v) = viewer {
        out.push_str("<nav aria-label=\"Main\"><ul><li><a href=\"/accounts\">Accounts</a></li>");
        if let Some(account) = v.account {
            let _ = write!(
                out,
                "<li><a href=\"/accounts/{0}/keys\">Keys</a></li><li><a href=\"/accounts/{0}/audit\">Audit trail</a></li>",
                url(account)
            );
        }
        if v.admin {
            out.push_str("<li><a href=\"/admin-tokens\">Admin tokens</a></li>");
        }
        let _ = write!(
            out,
            "</ul></nav><p class=\"who\">Signed in as <strong id=\"who\">{}</strong> ({}{})</p>\
             <form method=\"post\" action=\"/sign-out\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            esc(v.credential),
            esc(v.role),
            v.account.map(|a| format!(", account {}", esc(a))).unwrap_or_default(),
            esc(v.csrf)
        );
    }
    let _ = write!(out, "</header><main id=\"main\"><h1>{}</h1>{body}</main></body></html>", esc(title));
    Html(out).into_response()
}

/// A page saying what went wrong, with `status`.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<p role=\"alert\" class=\"error\" id=\"error\">{}</p><p><a href=\"/\">Back to the console</a></p>",
        esc(message)
    );
    let title = status.canonical_reason().unwrap_or("Error");
    (status, page(title, None, &body)).into_response()
}

/// A form or query the console cannot read: 400 saying why.
pub fn bad_request(message: &str) -> Response {
    error_page(StatusCode::BAD_REQUEST, message)
}

/// A key id from a path: a malformed one is a page not found.
pub fn key_id(raw: &str) -> Result<crate::domain::KeyId, Response> {
    crate::domain::KeyId::parse(raw).map_err(|e| error_page(StatusCode::NOT_FOUND, &e.to_string()))
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// One outcome's total over the chart's range.
pub struct OutcomeTotal {
    pub outcome: String,
    pub n: u64,
}

/// Counts by outcome, totalled over the range: allowed first, then denials by count.
pub fn totals(counts: &[UsageCount]) -> Vec<OutcomeTotal> {
    let mut totals: Vec<OutcomeTotal> = Vec::new();
    for c in counts {
        let outcome = outcome_name(c);
        match totals.iter_mut().find(|t| t.outcome == outcome) {
            Some(t) => t.n += c.n,
            None => totals.push(OutcomeTotal { outcome, n: c.n }),
        }
    }
    totals.sort_by(|a, b| (b.outcome == "allowed").cmp(&(a.outcome == "allowed")).then(b.n.cmp(&a.n)));
    totals
}

fn outcome_name(c: &UsageCount) -> String {
    match c.reason.is_empty() || c.reason == c.code {
        true => c.code.clone(),
        false => format!("{} ({})", c.code, c.reason),
    }
}

/// Usage by outcome over [from, to) as stacked bars, one per bucket of `width_ms`:
/// allowed solid, denied hatched (told apart without colour), a legend, and the same
/// numbers as a table.
pub fn usage_chart(counts: &[UsageCount], from_ms: i64, to_ms: i64, width_ms: i64, label: &str) -> String {
    let buckets = usize::try_from(((to_ms - from_ms) / width_ms.max(1)).clamp(1, 1500)).unwrap_or(1);
    let mut allowed = vec![0u64; buckets];
    let mut denied = vec![0u64; buckets];
    for c in counts {
        let i = usize::try_from((c.bucket_start - from_ms) / width_ms.max(1)).unwrap_or(usize::MAX);
        if i < buckets {
            match c.code == "allowed" {
                true => allowed[i] += c.n,
                false => denied[i] += c.n,
            }
        }
    }
    let peak = allowed.iter().zip(&denied).map(|(a, d)| a + d).max().unwrap_or(0).max(1);
    let (w, h, left, bottom) = (720.0_f64, 200.0_f64, 40.0_f64, 20.0_f64);
    let bar = (w - left) / buckets as f64;
    let scale = (h - bottom - 10.0) / peak as f64;
    let (total_allowed, total_denied): (u64, u64) = (allowed.iter().sum(), denied.iter().sum());
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure class=\"chart\"><svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-labelledby=\"chart-title\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title id=\"chart-title\">{label}: {total_allowed} allowed, {total_denied} \
         denied</title><defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" class=\"denied-bg\"/>\
         <line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" class=\"hatch\"/></pattern></defs>\
         <line x1=\"{left}\" y1=\"{axis}\" x2=\"{w}\" y2=\"{axis}\" class=\"axis\"/>\
         <text x=\"0\" y=\"14\" class=\"tick\">{peak}</text><text x=\"0\" y=\"{axis}\" class=\"tick\">0</text>",
        label = esc(label),
        axis = h - bottom
    );
    for i in 0..buckets {
        let x = left + i as f64 * bar;
        let a = allowed[i] as f64 * scale;
        let d = denied[i] as f64 * scale;
        let base = h - bottom;
        if allowed[i] > 0 {
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{a:.1}\" class=\"allowed\"><title>{} allowed</title></rect>",
                base - a,
                (bar - 1.0).max(1.0),
                allowed[i]
            );
        }
        if denied[i] > 0 {
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{d:.1}\" fill=\"url(#hatch)\" class=\"denied\"><title>{} denied</title></rect>",
                base - a - d,
                (bar - 1.0).max(1.0),
                denied[i]
            );
        }
    }
    svg.push_str(
        "</svg><figcaption><span class=\"swatch allowed\" aria-hidden=\"true\"></span> allowed (solid) \
         <span class=\"swatch denied\" aria-hidden=\"true\"></span> denied (hatched)</figcaption></figure>",
    );
    svg.push_str("<table id=\"usage-totals\"><caption>Decisions by outcome over the range</caption><thead><tr><th scope=\"col\">Outcome</th><th scope=\"col\">Decisions</th></tr></thead><tbody>");
    let rows = totals(counts);
    if rows.is_empty() {
        svg.push_str("<tr><td colspan=\"2\">No decisions in this range</td></tr>");
    }
    for t in rows {
        let _ = write!(svg, "<tr data-outcome=\"{0}\"><td>{0}</td><td class=\"n\">{1}</td></tr>", esc(&t.outcome), t.n);
    }
    svg.push_str("</tbody></table>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(esc("<script>\"a\"&'b'</script>"), "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;");
        assert_eq!(url("a b/c?d"), "a%20b%2Fc%3Fd");
    }

    #[test]
    fn the_chart_counts_each_outcome_in_its_bucket() {
        let count =
            |bucket_start, code: &str, n| UsageCount { bucket_start, code: code.into(), reason: String::new(), n };
        let counts = [count(60_000, "allowed", 20), count(60_000, "insufficient_scope", 10), count(0, "allowed", 1)];
        let chart = usage_chart(&counts, 0, 120_000, 60_000, "key");
        assert!(chart.contains("21 allowed, 10 denied"), "{chart}");
        assert!(chart.contains("<td>allowed</td><td class=\"n\">21</td>"), "{chart}");
        assert!(chart.contains("<td>insufficient_scope</td><td class=\"n\">10</td>"), "{chart}");
    }
}
