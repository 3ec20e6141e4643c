//! Just enough of Go's text/template to render upstream OpenSandbox e2e
//! testdata: `{{.X}}`, `{{if .X}}…{{else}}…{{end}}`, `{{range $k, $v := .M}}`
//! over a map, `{{ $k }}`, and the `{{-`/`-}}` whitespace trims.

use std::collections::BTreeMap;

/// Values for a rendering: scalars and maps (absent = empty = false).
#[derive(Clone, Default)]
pub struct Vars {
    pub scalars: BTreeMap<String, String>,
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
}

enum Node {
    Text(String),
    Value(String),
    If(String, Vec<Node>, Vec<Node>),
    Range(String, String, String, Vec<Node>),
}

/// Split into text and actions, applying the trim markers.
fn lex(src: &str) -> Result<Vec<(bool, String)>, String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let end = rest[start..]
            .find("}}")
            .ok_or_else(|| "unclosed {{".to_string())?
            + start;
        let mut body = &rest[start + 2..end];
        if let Some(b) = body.strip_prefix('-') {
            text = text.trim_end().to_string();
            body = b;
        }
        trim_next = false;
        if let Some(b) = body.strip_suffix('-') {
            trim_next = true;
            body = b;
        }
        out.push((false, text));
        out.push((true, body.trim().to_string()));
        rest = &rest[end + 2..];
    }
    let tail = if trim_next { rest.trim_start() } else { rest };
    out.push((false, tail.to_string()));
    Ok(out)
}

/// Parse up to an `else`/`end` (returned as the stop word).
fn parse(
    toks: &mut std::vec::IntoIter<(bool, String)>,
) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while let Some((action, s)) = toks.next() {
        if !action {
            nodes.push(Node::Text(s));
            continue;
        }
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            ["end"] | ["else"] => return Ok((nodes, Some(s))),
            ["if", cond] => {
                let (then, stop) = parse(toks)?;
                let otherwise = if stop.as_deref() == Some("else") {
                    parse(toks)?.0
                } else {
                    Vec::new()
                };
                nodes.push(Node::If(cond.to_string(), then, otherwise));
            }
            ["range", k, v, ":=", map] => {
                let (body, _) = parse(toks)?;
                let k = k.trim_end_matches(',');
                nodes.push(Node::Range(k.into(), v.to_string(), map.to_string(), body));
            }
            [one] => nodes.push(Node::Value(one.to_string())),
            _ => return Err(format!("unsupported action {{{{{s}}}}}")),
        }
    }
    Ok((nodes, None))
}

fn truthy(vars: &Vars, name: &str) -> bool {
    let n = name.trim_start_matches('.');
    vars.scalars.get(n).is_some_and(|v| !v.is_empty())
        || vars.maps.get(n).is_some_and(|m| !m.is_empty())
}

fn eval(
    nodes: &[Node],
    vars: &Vars,
    local: &BTreeMap<String, String>,
    out: &mut String,
) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Value(v) => {
                let got = local
                    .get(v)
                    .or_else(|| vars.scalars.get(v.trim_start_matches('.')))
                    .ok_or_else(|| format!("no value for {v}"))?;
                out.push_str(got);
            }
            Node::If(c, then, otherwise) => {
                let branch = if truthy(vars, c) { then } else { otherwise };
                eval(branch, vars, local, out)?;
            }
            Node::Range(k, v, map, body) => {
                let m = vars.maps.get(map.trim_start_matches('.'));
                for (key, val) in m.into_iter().flatten() {
                    let mut l = local.clone();
                    l.insert(k.clone(), key.clone());
                    l.insert(v.clone(), val.clone());
                    eval(body, vars, &l, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Render `src` with `vars`.
pub fn render(src: &str, vars: &Vars) -> Result<String, String> {
    let mut toks = lex(src)?.into_iter();
    let (nodes, stop) = parse(&mut toks)?;
    if let Some(s) = stop {
        return Err(format!("unexpected {{{{{s}}}}}"));
    }
    let mut out = String::new();
    eval(&nodes, vars, &BTreeMap::new(), &mut out)?;
    Ok(out)
}

#[test]
fn renders_go_template_subset() {
    let mut vars = Vars::default();
    vars.scalars.insert("Name".into(), "p".into());
    vars.maps
        .insert("Labels".into(), [("a".to_string(), "1".to_string())].into());
    let src = "name: {{.Name}}\n  {{- if .Labels }}\nlabels:\n  {{- range $key, $val := .Labels }}\n  {{ $key }}: \"{{ $val }}\"\n  {{- end }}\n{{- end }}\nx: {{if .Missing}}y{{else}}z{{end}}\n";
    assert_eq!(
        render(src, &vars).expect("render"),
        "name: p\nlabels:\n  a: \"1\"\nx: z\n"
    );
    assert!(render("{{.Nope}}", &vars).is_err());
}
