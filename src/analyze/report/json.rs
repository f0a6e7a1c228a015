//! The JSON report: the `Report` as serde writes it (fields only grow).

pub fn render(r: &crate::analyze::Report) -> String {
    serde_json::to_string_pretty(r).expect("a report serializes")
}
