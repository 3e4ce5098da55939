//! How the CLI prints answers: a table on a terminal, JSON when piped, or what
//! `-o table|json|yaml` asks for.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::IsTerminal as _;

use saphyr::{Mapping, Scalar, Yaml, YamlEmitter};
use serde_json::Value;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns (a listing) or `key: value` lines (one object).
    Table,
    /// Pretty JSON: what scripts read.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// `-o`'s value, or the default: a table on a terminal, JSON when piped.
    pub fn pick(flag: Option<&str>) -> anyhow::Result<Format> {
        match flag {
            None => Ok(if std::io::stdout().is_terminal() {
                Format::Table
            } else {
                Format::Json
            }),
            Some("table") => Ok(Format::Table),
            Some("json") => Ok(Format::Json),
            Some("yaml") => Ok(Format::Yaml),
            Some(o) => anyhow::bail!("-o {o}: expected table, json or yaml"),
        }
    }
}

/// Whether to colour what goes to stdout: a terminal, and no `NO_COLOR`.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The output format of this run (`-o`, or by whether stdout is a terminal).
static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// The format `-o` asked for, if it did.
static ASKED: std::sync::OnceLock<Option<Format>> = std::sync::OnceLock::new();

/// Sets the output format and whether `-o` chose it; the first call wins.
pub fn set_format(f: Format, asked: bool) {
    let _ = FORMAT.set(f);
    let _ = ASKED.set(asked.then_some(f));
}

/// The format `-o` asked for; None when it was left to the terminal (commands
/// whose output is mainly for people, such as `apply`'s diff, keep text then).
pub fn asked() -> Option<Format> {
    ASKED.get().copied().flatten()
}

/// The run's output format.
pub fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Json)
}

/// Prints an answer in the run's format (a table shows every scalar field).
pub fn print(v: &Value) {
    print_as(format(), v, &[]);
}

/// Prints a listing with these columns when it is a table.
pub fn show(v: &Value, columns: &[&str]) {
    print_as(format(), v, columns);
}

/// Prints data that is not the platform's (a function's result): JSON, or YAML if
/// asked for, never a table.
pub fn print_data(v: &Value) {
    let f = match format() {
        Format::Table => Format::Json,
        f => f,
    };
    print_as(f, v, &[]);
}

/// Prints `v` in `format`. `columns` picks a listing's columns (all scalar fields,
/// in order, when empty).
pub fn print_as(format: Format, v: &Value, columns: &[&str]) {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
        Format::Yaml => to_yaml(v),
        Format::Table => table(v, columns, colour()),
    };
    print!("{text}");
}

/// `v` as a YAML document (without the `---` line).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    let mut e = YamlEmitter::new(&mut out);
    // A failure here is a `fmt::Write` into a String: it cannot happen.
    let _ = e.dump(&yaml(v));
    let body = out.strip_prefix("---\n").unwrap_or(&out).to_string();
    if body.ends_with('\n') {
        body
    } else {
        body + "\n"
    }
}

fn yaml(v: &Value) -> Yaml<'static> {
    match v {
        Value::Null => Yaml::Value(Scalar::Null),
        Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Value(Scalar::Integer(i)),
            None => Yaml::Value(Scalar::FloatingPoint(n.as_f64().unwrap_or(0.0).into())),
        },
        Value::String(s) => Yaml::Value(Scalar::String(Cow::Owned(s.clone()))),
        Value::Array(a) => Yaml::Sequence(a.iter().map(yaml).collect()),
        Value::Object(o) => {
            let mut m = Mapping::new();
            // `name` first, where an object has one: it says what the rest is of.
            let named = o.get_key_value("name").into_iter();
            for (k, v) in named.chain(o.iter().filter(|(k, _)| *k != "name")) {
                m.insert(Yaml::Value(Scalar::String(Cow::Owned(k.clone()))), yaml(v));
            }
            Yaml::Mapping(m)
        }
    }
}

/// The widest a table cell gets before it is cut with `…`.
const CELL: usize = 48;

/// `v` as a table: the rows of its one list (e.g. `{"functions": […]}`), or
/// `key  value` lines for an object.
pub fn table(v: &Value, columns: &[&str], colour: bool) -> String {
    let rows = match v {
        Value::Array(a) => Some(a.as_slice()),
        Value::Object(o) => {
            let lists: Vec<&Vec<Value>> = o.values().filter_map(Value::as_array).collect();
            let scalars = o.values().filter(|x| !x.is_array()).count();
            match lists.as_slice() {
                [one] if scalars <= 1 => Some(one.as_slice()),
                _ => None,
            }
        }
        _ => None,
    };
    match rows {
        Some(rows) => listing(rows, columns, colour),
        None => match v {
            Value::Object(o) => {
                let width = o.keys().map(|k| k.chars().count()).max().unwrap_or(0);
                let mut out = String::new();
                for (k, x) in o {
                    let _ = writeln!(
                        out,
                        "{}  {}",
                        header(&format!("{k:<width$}"), colour),
                        cell(x, usize::MAX)
                    );
                }
                out
            }
            other => format!("{}\n", cell(other, usize::MAX)),
        },
    }
}

fn header(s: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[1m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// A value as a cell: strings bare, `-` for null, other values as compact JSON.
fn cell(v: &Value, max: usize) -> String {
    let s = match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > max {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        s
    }
}

fn listing(rows: &[Value], columns: &[&str], colour: bool) -> String {
    if rows.is_empty() {
        return "(none)\n".to_string();
    }
    let cols: Vec<String> = if columns.is_empty() {
        let mut cols: Vec<String> = Vec::new();
        for r in rows {
            if let Value::Object(o) = r {
                for (k, x) in o {
                    if !x.is_object() && !x.is_array() && !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
        }
        if cols.is_empty() {
            vec![String::new()]
        } else {
            cols
        }
    } else {
        columns.iter().map(|c| c.to_string()).collect()
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| match r {
                    Value::Object(_) => cell(&r[c.as_str()], CELL),
                    scalar => cell(scalar, CELL),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, items: &[String]| {
        let parts: Vec<String> = items
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    let mut out = String::new();
    let heads: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
    let mut head = String::new();
    line(&mut head, &heads);
    out.push_str(&header(head.trim_end(), colour));
    out.push('\n');
    for r in &cells {
        line(&mut out, r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_listing_has_the_asked_columns_and_no_colour_when_asked_for_none() {
        let v = json!({"functions": [
            {"name": "a", "state": "Active", "memory_mb": 128, "env": {"K": "V"}},
            {"name": "bbbbbb", "state": "Pending", "memory_mb": 256, "env": {}}]});
        let t = table(&v, &["name", "state", "memory_mb"], false);
        assert_eq!(
            t,
            "NAME    STATE    MEMORY_MB\na       Active   128\nbbbbbb  Pending  256\n"
        );
        assert!(table(&v, &["name"], true).starts_with("\x1b[1mNAME"));
        // Without asked columns: every scalar field by name, nested ones left out.
        assert!(table(&v, &[], false).starts_with("MEMORY_MB  NAME    STATE\n"));
        assert_eq!(table(&json!({"functions": []}), &[], false), "(none)\n");
    }

    #[test]
    fn an_object_is_key_value_lines() {
        let t = table(
            &json!({"name": "a", "online": true, "reason": null}),
            &[],
            false,
        );
        assert_eq!(t, "name    a\nonline  true\nreason  -\n");
    }

    #[test]
    fn yaml_keeps_strings_that_look_like_numbers_strings() {
        let y = to_yaml(&json!({"version": "2", "weights": {"3": 0.1}, "on": true, "n": 5}));
        use saphyr::LoadableYamlNode as _;
        let back = saphyr::Yaml::load_from_str(&y).unwrap();
        let m = &back[0];
        assert_eq!(m["version"].as_str(), Some("2"), "{y}");
        assert_eq!(m["n"].as_integer(), Some(5), "{y}");
        assert_eq!(m["on"].as_bool(), Some(true), "{y}");
        assert!(!y.starts_with("---"), "{y}");
    }
}
