//! Input and output processing of ASL: paths (RFC 9535 JSONPath through
//! `serde_json_path`, with ASL's `$$` for the context object), payload templates
//! (`Parameters`, `ResultSelector`, `ItemSelector`: keys ending in `.$` take a path,
//! a context path or an intrinsic function), `ResultPath`, and the intrinsic
//! functions.

use serde_json::{Map, Value, json};
use serde_json_path::JsonPath;

use crate::asl::PathField;

/// A runtime failure of path processing: ASL's `States.Runtime` (or the intrinsic's
/// own error name).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}: {cause}")]
pub struct PathError {
    /// The ASL error name.
    pub error: &'static str,
    /// What happened.
    pub cause: String,
}

fn runtime(cause: impl Into<String>) -> PathError {
    PathError {
        error: "States.Runtime",
        cause: cause.into(),
    }
}

fn intrinsic_failure(cause: impl Into<String>) -> PathError {
    PathError {
        error: "States.IntrinsicFailure",
        cause: cause.into(),
    }
}

/// A path of Step Functions as RFC 9535 reads it. Step Functions' paths accept
/// member names after a dot that RFC 9535's shorthand does not (`$.delivery-partner`,
/// `$.1st`): those become bracketed names (`$['delivery-partner']`). A `$$` (context)
/// path becomes `$`. Brackets, and what is in them, are kept as written.
pub fn rfc9535(path: &str) -> String {
    let path = path
        .strip_prefix('$')
        .map_or(path, |r| if r.starts_with('$') { r } else { path });
    let shorthand = |name: &str| {
        let mut cs = name.chars();
        cs.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii())
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii())
    };
    let mut out = String::with_capacity(path.len() + 8);
    let (mut depth, mut quote) = (0usize, None::<char>);
    let mut rest = path;
    while let Some(c) = rest.chars().next() {
        if let Some(q) = quote {
            out.push(c);
            rest = &rest[c.len_utf8()..];
            if c == '\\' {
                if let Some(n) = rest.chars().next() {
                    out.push(n);
                    rest = &rest[n.len_utf8()..];
                }
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' if depth > 0 => quote = Some(c),
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                let dots = if rest.starts_with("..") { ".." } else { "." };
                let after = &rest[dots.len()..];
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                if !name.is_empty() && name != "*" && !shorthand(name) {
                    out.push_str(if dots == ".." { "..['" } else { "['" });
                    for ch in name.chars() {
                        if matches!(ch, '\'' | '\\') {
                            out.push('\\');
                        }
                        out.push(ch);
                    }
                    out.push_str("']");
                } else {
                    out.push_str(dots);
                    out.push_str(name);
                }
                rest = &after[end..];
                continue;
            }
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Whether a path can match several nodes (then it yields an array).
fn indefinite(p: &str) -> bool {
    p.contains('*') || p.contains("..") || p.contains("[?") || p.contains(':') || p.contains(',')
}

/// Selects `path` from `input`, or from `context` for a `$$` path.
pub fn select(path: &str, input: &Value, context: &Value) -> Result<Value, PathError> {
    let doc = if path.starts_with("$$") {
        context
    } else {
        input
    };
    let p = rfc9535(path);
    let q = JsonPath::parse(&p).map_err(|e| runtime(format!("'{path}' is not a path: {e}")))?;
    let nodes = q.query(doc);
    if indefinite(&p) {
        return Ok(Value::Array(nodes.all().into_iter().cloned().collect()));
    }
    nodes
        .exactly_one()
        .cloned()
        .map_err(|_| runtime(format!("the path '{path}' matched nothing in the input")))
}

/// `InputPath` or `OutputPath`: absent is `$` (all of it), null is `{}`.
pub fn filter(field: &PathField, value: &Value, context: &Value) -> Result<Value, PathError> {
    match field {
        PathField::Absent => Ok(value.clone()),
        PathField::Null => Ok(json!({})),
        PathField::Path(p) => select(p, value, context),
    }
}

/// Fills a payload template from `input` (and the context object).
pub fn template(t: &Value, input: &Value, context: &Value) -> Result<Value, PathError> {
    Ok(match t {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                match k.strip_suffix(".$") {
                    Some(key) => {
                        let s = v.as_str().ok_or_else(|| {
                            runtime(format!("the value of '{k}' must be a path or an intrinsic"))
                        })?;
                        let filled = if s.starts_with("States.") {
                            eval_intrinsic(
                                &parse_intrinsic(s).map_err(intrinsic_failure)?,
                                input,
                                context,
                            )?
                        } else {
                            select(s, input, context)?
                        };
                        out.insert(key.to_string(), filled);
                    }
                    None => {
                        out.insert(k.clone(), template(v, input, context)?);
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| template(v, input, context))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// Puts `result` into `input` at `ResultPath`: absent or `$` replaces the input,
/// null keeps the input and drops the result, `$.a.b` sets that field (making the
/// objects on the way).
pub fn put_result(field: &PathField, input: &Value, result: Value) -> Result<Value, PathError> {
    let path = match field {
        PathField::Absent => return Ok(result),
        PathField::Null => return Ok(input.clone()),
        PathField::Path(p) if p == "$" => return Ok(result),
        PathField::Path(p) => p,
    };
    let names = reference_path(path)?;
    let mut out = input.clone();
    let mut cur = &mut out;
    for (i, name) in names.iter().enumerate() {
        let obj = match cur {
            Value::Object(o) => o,
            other if i == 0 => {
                return Err(runtime(format!(
                    "ResultPath '{path}' needs an object input, not {}",
                    kind(other)
                )));
            }
            _ => {
                return Err(runtime(format!(
                    "ResultPath '{path}' goes through something that is not an object"
                )));
            }
        };
        if i + 1 == names.len() {
            obj.insert(name.clone(), result);
            break;
        }
        cur = obj.entry(name.clone()).or_insert_with(|| json!({}));
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The field names of a reference path: `$.a.b`, `$['a']['b']`. The path is checked
/// by `serde_json_path` first; a reference path then has only name segments, which
/// this reads back.
fn reference_path(path: &str) -> Result<Vec<String>, PathError> {
    JsonPath::parse(&rfc9535(path)).map_err(|e| runtime(format!("ResultPath '{path}': {e}")))?;
    let fields_only = || runtime(format!("ResultPath '{path}' must name fields only ($.a.b)"));
    let mut rest = path.strip_prefix('$').ok_or_else(fields_only)?;
    let mut names = vec![];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 || r[..end].contains('*') {
                return Err(fields_only());
            }
            names.push(r[..end].to_string());
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['").or_else(|| rest.strip_prefix("[\"")) {
            let quote = if rest.starts_with("['") { "']" } else { "\"]" };
            let end = r.find(quote).ok_or_else(fields_only)?;
            names.push(r[..end].to_string());
            rest = &r[end + 2..];
        } else {
            return Err(fields_only());
        }
    }
    if names.is_empty() {
        return Err(runtime(format!("ResultPath '{path}' names no field")));
    }
    Ok(names)
}

/// A parsed intrinsic function call.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// A literal: string, number, boolean or null.
    Literal(Value),
    /// A path into the input (or `$$` context).
    Path(String),
    /// A nested call.
    Call(String, Vec<Arg>),
}

/// The intrinsic functions Nimbus has.
pub const INTRINSICS: &[&str] = &[
    "States.Format",
    "States.StringToJson",
    "States.JsonToString",
    "States.Array",
    "States.ArrayLength",
    "States.ArrayGetItem",
    "States.MathAdd",
    "States.StringSplit",
    "States.UUID",
];

/// Parses `States.Name(arg, …)`.
pub fn parse_intrinsic(s: &str) -> Result<Arg, String> {
    let mut p = Parser { s, i: 0 };
    let a = p.call()?;
    p.ws();
    if p.i != s.len() {
        return Err(format!("unexpected '{}' after the call", &s[p.i..]));
    }
    Ok(a)
}

struct Parser<'a> {
    s: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s[self.i..].starts_with(' ') {
            self.i += 1;
        }
    }

    fn call(&mut self) -> Result<Arg, String> {
        self.ws();
        let rest = &self.s[self.i..];
        let open = rest
            .find('(')
            .ok_or_else(|| format!("'{rest}' is not a call"))?;
        let name = rest[..open].trim().to_string();
        if !INTRINSICS.contains(&name.as_str()) {
            return Err(format!(
                "'{name}' is not an intrinsic function (Nimbus has {})",
                INTRINSICS.join(", ")
            ));
        }
        self.i += open + 1;
        let mut args = vec![];
        self.ws();
        if self.s[self.i..].starts_with(')') {
            self.i += 1;
            return Ok(Arg::Call(name, args));
        }
        loop {
            args.push(self.arg()?);
            self.ws();
            match self.s[self.i..].chars().next() {
                Some(',') => self.i += 1,
                Some(')') => {
                    self.i += 1;
                    return Ok(Arg::Call(name, args));
                }
                _ => return Err(format!("expected ',' or ')' in {}", self.s)),
            }
        }
    }

    fn arg(&mut self) -> Result<Arg, String> {
        self.ws();
        let rest = &self.s[self.i..];
        if let Some(body) = rest.strip_prefix('\'') {
            let mut out = String::new();
            let mut chars = body.char_indices();
            while let Some((j, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e)) => out.push(e),
                        None => break,
                    },
                    '\'' => {
                        self.i += j + 2;
                        return Ok(Arg::Literal(Value::String(out)));
                    }
                    c => out.push(c),
                }
            }
            return Err("a string argument is not closed".into());
        }
        if rest.starts_with("States.") {
            return self.call();
        }
        // A path or a literal runs to the next ',' or ')' outside brackets.
        let mut depth = 0i32;
        let mut end = rest.len();
        for (j, c) in rest.char_indices() {
            match c {
                '[' | '(' => depth += 1,
                ']' => depth -= 1,
                ')' if depth == 0 => {
                    end = j;
                    break;
                }
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    end = j;
                    break;
                }
                _ => {}
            }
        }
        let token = rest[..end].trim();
        self.i += end;
        if token.starts_with('$') {
            JsonPath::parse(&rfc9535(token))
                .map_err(|e| format!("'{token}' is not a path: {e}"))?;
            return Ok(Arg::Path(token.to_string()));
        }
        serde_json::from_str::<Value>(token)
            .ok()
            .filter(|v| !v.is_object() && !v.is_array())
            .map(Arg::Literal)
            .ok_or_else(|| {
                format!("'{token}' is not a path, a string, a number, a boolean or null")
            })
    }
}

fn value_of(a: &Arg, input: &Value, context: &Value) -> Result<Value, PathError> {
    match a {
        Arg::Literal(v) => Ok(v.clone()),
        Arg::Path(p) => select(p, input, context),
        Arg::Call(..) => eval_intrinsic(a, input, context),
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs an intrinsic function.
pub fn eval_intrinsic(call: &Arg, input: &Value, context: &Value) -> Result<Value, PathError> {
    let Arg::Call(name, args) = call else {
        return value_of(call, input, context);
    };
    let vals = args
        .iter()
        .map(|a| value_of(a, input, context))
        .collect::<Result<Vec<_>, _>>()?;
    let want = |n: usize| {
        if vals.len() == n {
            Ok(())
        } else {
            Err(intrinsic_failure(format!(
                "{name} takes {n} arguments, not {}",
                vals.len()
            )))
        }
    };
    match name.as_str() {
        "States.Format" => {
            let Some(Value::String(fmt)) = vals.first() else {
                return Err(intrinsic_failure(
                    "States.Format needs a format string first",
                ));
            };
            let mut out = String::new();
            let mut rest = vals[1..].iter();
            let mut chars = fmt.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    }
                    '{' if chars.peek() == Some(&'}') => {
                        chars.next();
                        let v = rest.next().ok_or_else(|| {
                            intrinsic_failure("States.Format has more {} than arguments")
                        })?;
                        out.push_str(&as_text(v));
                    }
                    c => out.push(c),
                }
            }
            if rest.next().is_some() {
                return Err(intrinsic_failure(
                    "States.Format has more arguments than {}",
                ));
            }
            Ok(Value::String(out))
        }
        "States.StringToJson" => {
            want(1)?;
            let s = vals[0]
                .as_str()
                .ok_or_else(|| intrinsic_failure("States.StringToJson takes a string"))?;
            serde_json::from_str(s)
                .map_err(|e| intrinsic_failure(format!("States.StringToJson: {e}")))
        }
        "States.JsonToString" => {
            want(1)?;
            Ok(Value::String(vals[0].to_string()))
        }
        "States.Array" => Ok(Value::Array(vals)),
        "States.ArrayLength" => {
            want(1)?;
            let a = vals[0]
                .as_array()
                .ok_or_else(|| intrinsic_failure("States.ArrayLength takes an array"))?;
            Ok(json!(a.len()))
        }
        "States.ArrayGetItem" => {
            want(2)?;
            let (a, i) = (vals[0].as_array(), vals[1].as_u64());
            match (a, i) {
                (Some(a), Some(i)) => a
                    .get(i as usize)
                    .cloned()
                    .ok_or_else(|| intrinsic_failure("States.ArrayGetItem: index out of range")),
                _ => Err(intrinsic_failure(
                    "States.ArrayGetItem takes an array and an index",
                )),
            }
        }
        "States.MathAdd" => {
            want(2)?;
            match (vals[0].as_i64(), vals[1].as_i64()) {
                (Some(a), Some(b)) => Ok(json!(a.saturating_add(b))),
                _ => Err(intrinsic_failure("States.MathAdd takes two integers")),
            }
        }
        "States.StringSplit" => {
            want(2)?;
            match (vals[0].as_str(), vals[1].as_str()) {
                (Some(s), Some(d)) if !d.is_empty() => Ok(Value::Array(
                    s.split(|c| d.contains(c))
                        .filter(|p| !p.is_empty())
                        .map(|p| Value::String(p.into()))
                        .collect(),
                )),
                _ => Err(intrinsic_failure(
                    "States.StringSplit takes a string and delimiters",
                )),
            }
        }
        "States.UUID" => {
            want(0)?;
            Ok(Value::String(uuid::Uuid::new_v4().to_string()))
        }
        other => Err(intrinsic_failure(format!(
            "unknown intrinsic function {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Value {
        json!({"Execution": {"Id": "e-1", "Input": {}}, "State": {"Name": "S"}})
    }

    /// The ASL specification's InputPath / Parameters / ResultPath / OutputPath
    /// example.
    #[test]
    fn the_specification_s_path_example() {
        let input = json!({
            "title": "Numbers to add", "numbers": {"val1": 3, "val2": 4}
        });
        let effective = filter(&PathField::Path("$.numbers".into()), &input, &ctx()).unwrap();
        assert_eq!(effective, json!({"val1": 3, "val2": 4}));
        // The function returns their sum; ResultPath puts it beside the input.
        let with_sum = put_result(&PathField::Path("$.sum".into()), &input, json!(7)).unwrap();
        assert_eq!(with_sum["sum"], 7);
        assert_eq!(with_sum["title"], "Numbers to add");
        let out = filter(&PathField::Path("$.sum".into()), &with_sum, &ctx()).unwrap();
        assert_eq!(out, json!(7));
        // ResultPath null keeps the input; absent replaces it; OutputPath null is {}.
        assert_eq!(
            put_result(&PathField::Null, &input, json!(7)).unwrap(),
            input
        );
        assert_eq!(
            put_result(&PathField::Absent, &input, json!(7)).unwrap(),
            json!(7)
        );
        assert_eq!(filter(&PathField::Null, &input, &ctx()).unwrap(), json!({}));
        // Nested, making the objects on the way.
        let deep = put_result(&PathField::Path("$.a.b".into()), &json!({}), json!(1)).unwrap();
        assert_eq!(deep, json!({"a": {"b": 1}}));
        assert!(put_result(&PathField::Path("$.a[0]".into()), &json!({}), json!(1)).is_err());
        assert!(put_result(&PathField::Path("$.x".into()), &json!(3), json!(1)).is_err());
    }

    /// The specification's Parameters example, with the context object and
    /// intrinsics.
    #[test]
    fn templates_fill_paths_context_and_intrinsics() {
        let input = json!({
            "flagged": 7,
            "vals": [{"val": 1}, {"val": 2}, {"val": 3}],
            "json": "{\"a\": [1, 2]}",
            "name": "Ada",
        });
        let t = json!({
            "flagged": true,
            "parts": {"first.$": "$.vals[0]", "last3.$": "$.vals[-3:]"},
            "all.$": "$.vals[*].val",
            "exec.$": "$$.Execution.Id",
            "greeting.$": "States.Format('Hello, {}! You have {} items.', $.name, $.flagged)",
            "parsed.$": "States.StringToJson($.json)",
            "back.$": "States.JsonToString($.vals[0])",
            "arr.$": "States.Array(1, 'two', $.flagged, null)",
            "n.$": "States.ArrayLength($.vals)",
            "nested.$": "States.Format('{}', States.MathAdd($.flagged, 1))",
        });
        let out = template(&t, &input, &ctx()).unwrap();
        assert_eq!(out["flagged"], true);
        assert_eq!(out["parts"]["first"], json!({"val": 1}));
        assert_eq!(
            out["parts"]["last3"],
            json!([{"val": 1}, {"val": 2}, {"val": 3}])
        );
        assert_eq!(out["all"], json!([1, 2, 3]));
        assert_eq!(out["exec"], "e-1");
        assert_eq!(out["greeting"], "Hello, Ada! You have 7 items.");
        assert_eq!(out["parsed"], json!({"a": [1, 2]}));
        assert_eq!(out["back"], "{\"val\":1}");
        assert_eq!(out["arr"], json!([1, "two", 7, null]));
        assert_eq!(out["n"], 3);
        assert_eq!(out["nested"], "8");
        // A path that matches nothing is a runtime error, named as ASL names it.
        let e = template(&json!({"x.$": "$.missing"}), &input, &ctx()).unwrap_err();
        assert_eq!(e.error, "States.Runtime");
        let e = template(
            &json!({"x.$": "States.StringToJson($.name)"}),
            &input,
            &ctx(),
        )
        .unwrap_err();
        assert_eq!(e.error, "States.IntrinsicFailure");
    }

    #[test]
    fn step_functions_names_read_as_rfc_9535() {
        assert_eq!(rfc9535("$.delivery-partner"), "$['delivery-partner']");
        assert_eq!(rfc9535("$$.Map.Item.Value"), "$.Map.Item.Value");
        assert_eq!(rfc9535("$.a-b.c[0].d-e"), "$['a-b'].c[0]['d-e']");
        assert_eq!(rfc9535("$..x-y"), "$..['x-y']");
        assert_eq!(rfc9535("$.it's"), "$['it\\'s']");
        assert_eq!(
            rfc9535("$.a[?(@.b-c == 'x.y-z')]"),
            "$.a[?(@.b-c == 'x.y-z')]"
        );
        assert_eq!(rfc9535("$.items[*].id"), "$.items[*].id");
        assert_eq!(rfc9535("$.*"), "$.*");
        let doc = json!({"delivery-partner": "UQS", "1st": 1});
        assert_eq!(
            select("$.delivery-partner", &doc, &json!({})).unwrap(),
            "UQS"
        );
        assert_eq!(select("$.1st", &doc, &json!({})).unwrap(), 1);
        assert_eq!(
            put_result(&PathField::Path("$.x-y.z".into()), &doc, json!(2)).unwrap()["x-y"]["z"],
            2
        );
    }

    #[test]
    fn intrinsics_parse_strictly() {
        assert!(parse_intrinsic("States.Format('a {}', $.x)").is_ok());
        assert!(parse_intrinsic("States.Format('it\\'s {}', 'x')").is_ok());
        assert!(parse_intrinsic("States.Array()").is_ok());
        assert!(parse_intrinsic("Evil.Call($.x)").is_err());
        assert!(parse_intrinsic("States.Format('unclosed").is_err());
        assert!(parse_intrinsic("States.Format('a') trailing").is_err());
        assert!(parse_intrinsic("States.Array({\"a\": 1})").is_err());
    }
}
