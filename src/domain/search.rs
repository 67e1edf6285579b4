//! `search_params`: the JSON string of the error page's "Search parameters" section,
//! e.g. `{"searchString": "john", "categories": ["Login"]}`. Malformed JSON is always a
//! VALIDATION_ERROR that names the problem (the page allows either; we choose one).

use super::InvalidField;
use serde::Deserialize;

pub const MAX_SEARCH_STRING: usize = 200;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SearchParams {
    /// Trimmed; `None` when absent or blank.
    pub search_string: Option<String>,
    pub categories: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    search_string: Option<String>,
    #[serde(default)]
    categories: Vec<String>,
}

impl SearchParams {
    /// An empty string means no search.
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        if raw.trim().is_empty() {
            return Ok(Self::default());
        }
        let parsed: Raw = serde_json::from_str(raw)
            .map_err(|e| InvalidField::new("search_params", format!("is not valid search JSON: {e}")))?;
        let search_string = parsed.search_string.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        if search_string.as_ref().is_some_and(|s| s.chars().count() > MAX_SEARCH_STRING) {
            return Err(InvalidField::new(
                "search_params",
                format!("searchString must be at most {MAX_SEARCH_STRING} characters"),
            ));
        }
        Ok(Self { search_string, categories: parsed.categories })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_page_example() {
        let p = SearchParams::parse(r#"{"searchString": " john ", "categories": ["Login"]}"#).unwrap();
        assert_eq!(p.search_string.as_deref(), Some("john"));
        assert_eq!(p.categories, ["Login"]);
        assert_eq!(SearchParams::parse("").unwrap(), SearchParams::default());
        assert_eq!(SearchParams::parse("{}").unwrap(), SearchParams::default());
    }

    #[test]
    fn malformed_json_is_always_a_validation_error() {
        for bad in ["{", "[]", "null", r#"{"searchString": 5}"#, r#"{"search": "x"}"#, "john"] {
            let err = SearchParams::parse(bad).unwrap_err();
            assert_eq!(err.field, "search_params", "{bad}");
        }
    }
}
