//! Printing lists as a table, JSON or CSV.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::cli::Format;

/// Prints `rows` (with `headers`) in `format`; JSON prints `json` instead, the full records.
pub fn print<T: Serialize>(
    format: Format,
    headers: &[&str],
    rows: Vec<Vec<String>>,
    json: &T,
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(json)?);
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record(headers)?;
            for r in rows {
                w.write_record(r)?;
            }
            w.flush()?;
        }
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(NOTHING)
                .set_content_arrangement(ContentArrangement::Disabled)
                .set_header(headers.iter().map(|h| h.to_string()));
            for r in rows {
                t.add_row(r);
            }
            println!("{}", t.trim_fmt());
        }
    }
    Ok(())
}

/// Parses KEY=VALUE pairs given on the command line.
pub fn parse_tags(
    pairs: &[String],
) -> Result<std::collections::BTreeMap<String, String>, crate::UsageError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| crate::UsageError(format!("invalid tag {p:?}: expected KEY=VALUE")))
        })
        .collect()
}
