//! An offline check of the rules a kube-apiserver applies to the schemas of an
//! `apiextensions.k8s.io/v1` `CustomResourceDefinition`, chiefly the structural
//! schema rules.
//!
//! No apiserver runs here, so this ports the relevant parts of
//! `k8s.io/apiextensions-apiserver`: `pkg/apiserver/schema/{validation,complete}.go`
//! (structural rules 1–4) and `pkg/apis/apiextensions/validation/validation.go`
//! (v1 bans, list types, defaults, subresources, printer columns).
//!
//! Messages marked "(lint)" flag what the apiserver accepts but silently
//! prunes: a status subresource with no `status` in the schema, and scale
//! paths outside the schema. Two rules are stricter than Go: rule 2 is checked
//! at every node, as the Kubernetes docs state it (Go's `complete.go` starts
//! only from the root), and the root must be `type: object` even when it sets
//! `x-kubernetes-preserve-unknown-fields`.
//!
//! Not covered: CEL rules, `format` names, `pattern` syntax, the root keys
//! allowed with a status subresource, `x-kubernetes-map-type`, atomic items of
//! sets, and full validation of defaults (only type, null, enum and pruning).

use std::collections::HashSet;

use serde_json::{Map, Value, json};

type Schema = Map<String, Value>;

const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";
const INT_OR_STRING: &str = "x-kubernetes-int-or-string";
const EMBEDDED: &str = "x-kubernetes-embedded-resource";
const META_FIELDS: [&str; 3] = ["metadata", "kind", "apiVersion"];
const TYPES: [&str; 6] = ["array", "boolean", "integer", "number", "object", "string"];
const UNSUPPORTED: [&str; 7] = [
    "$ref",
    "$schema",
    "id",
    "definitions",
    "patternProperties",
    "dependencies",
    "additionalItems",
];
/// Must be absent inside `allOf`/`anyOf`/`oneOf`/`not`.
const NESTED_ABSENT: [&str; 5] = [
    "default",
    "additionalProperties",
    "externalDocs",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
];
/// Must be empty or false inside `allOf`/`anyOf`/`oneOf`/`not`.
const NESTED_EMPTY: [&str; 9] = [
    "type",
    "title",
    "description",
    "nullable",
    PRESERVE,
    EMBEDDED,
    INT_OR_STRING,
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
];
const COLUMN_TYPES: [&str; 5] = ["integer", "number", "string", "boolean", "date"];
const COLUMN_FORMATS: [&str; 8] = [
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "password",
];
const RULE_3: &str = "must not be set inside allOf/anyOf/oneOf/not (structural rule 3)";
const RULE_4: &str = "metadata may only restrict name and generateName (structural rule 4)";

/// Checks a whole CRD object. Returns one message per problem, each starting
/// with the JSON path it is about, sorted (as Go sorts them); empty means OK.
#[must_use]
pub fn check_crd(crd: &Value) -> Vec<String> {
    let mut checker = Checker::default();
    checker.crd(crd);
    checker.errs.sort();
    checker.errs
}

/// Where a structural node sits.
#[derive(Default)]
struct Ctx {
    root: bool,
    /// Inside the `metadata`/`kind`/`apiVersion` of the root or of an embedded resource.
    in_meta: bool,
    /// Why defaults are forbidden here, if they are.
    no_defaults: Option<String>,
}

impl Ctx {
    /// The context of a child node; `reason` forbids defaults there too.
    fn child(&self, in_meta: bool, reason: Option<String>) -> Self {
        let no_defaults = reason.or_else(|| self.no_defaults.clone());
        Self {
            root: false,
            in_meta,
            no_defaults,
        }
    }
}

/// Where a `.a.b` path lands in a schema.
enum Target<'a> {
    Field(&'a Schema),
    /// Inside a node that keeps unknown fields.
    Unknown,
    /// Nowhere, so pruning drops the value.
    Pruned,
}

/// `s[key]`, with null taken as absent, as Go's decoding does.
fn field<'a>(s: &'a Schema, key: &str) -> Option<&'a Value> {
    s.get(key).filter(|v| !v.is_null())
}

fn flag(s: &Schema, key: &str) -> bool {
    s.get(key) == Some(&Value::Bool(true))
}

fn type_of(s: &Schema) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or("")
}

fn props(s: &Schema) -> impl Iterator<Item = (&String, &Value)> {
    s.get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
}

fn prop_value<'a>(s: &'a Schema, key: &str) -> Option<&'a Value> {
    s.get("properties")?.get(key)
}

fn prop<'a>(s: &'a Schema, key: &str) -> Option<&'a Schema> {
    prop_value(s, key)?.as_object()
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Set in the Go sense: not absent, null, false, "", [] or {}.
fn is_set(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null | Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn is_int(v: &Value) -> bool {
    v.as_f64().is_some_and(|f| f.fract() == 0.0)
}

/// `anyOf: [{type: integer}, {type: string}]`, the one place a junctor may set `type`.
fn is_int_or_string_any_of(any_of: Option<&Value>) -> bool {
    any_of == Some(&json!([{"type": "integer"}, {"type": "string"}]))
}

/// Whether pruning keeps undeclared fields, via `additionalProperties`.
fn keeps_unknown(s: &Schema) -> bool {
    field(s, "additionalProperties").is_some_and(|a| a != false)
}

fn resolve<'a>(mut s: &'a Schema, path: &str) -> Target<'a> {
    for segment in path.trim_start_matches('.').split('.') {
        s = match prop(s, segment) {
            Some(next) => next,
            None if flag(s, PRESERVE) || keeps_unknown(s) => return Target::Unknown,
            None => return Target::Pruned,
        };
    }
    Target::Field(s)
}

#[derive(Default)]
struct Checker {
    errs: Vec<String>,
}

impl Checker {
    fn err(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.errs.push(format!("{path}: {msg}"));
    }

    /// Reports the message of each `(broken, message)` rule that is broken.
    fn report(&mut self, path: &str, rules: &[(bool, &str)]) {
        for (_, msg) in rules.iter().filter(|(broken, _)| *broken) {
            self.err(path, msg);
        }
    }

    fn crd(&mut self, crd: &Value) {
        let spec = &crd["spec"];
        let (plural, group) = (str_at(&spec["names"], "plural"), str_at(spec, "group"));
        let want = format!("{plural}.{group}");
        if str_at(&crd["metadata"], "name") != want {
            let msg = format!("must be spec.names.plural + \".\" + spec.group = {want:?}");
            self.err("metadata.name", msg);
        }
        let Some(versions) = spec["versions"].as_array().filter(|v| !v.is_empty()) else {
            return self.err("spec.versions", "must be a non-empty list");
        };
        let (mut names, mut storage) = (HashSet::new(), 0);
        for (i, version) in versions.iter().enumerate() {
            let path = format!("spec.versions[{i}]");
            let name = str_at(version, "name");
            if name.is_empty() || !names.insert(name) {
                self.err(&format!("{path}.name"), "must be a non-empty, unique name");
            }
            for key in ["served", "storage"] {
                if !version[key].is_boolean() {
                    self.err(&format!("{path}.{key}"), "must be a boolean");
                }
            }
            storage += usize::from(version["storage"] == true);
            self.version(version, &path);
        }
        if storage != 1 {
            let msg = format!("exactly one version must have storage: true, not {storage}");
            self.err("spec.versions", msg);
        }
    }

    fn version(&mut self, version: &Value, path: &str) {
        let columns = &version["additionalPrinterColumns"];
        for (i, col) in columns.as_array().into_iter().flatten().enumerate() {
            let (ty, format) = (str_at(col, "type"), str_at(col, "format"));
            #[rustfmt::skip]
            self.report(&format!("{path}.additionalPrinterColumns[{i}]"), &[
                (str_at(col, "name").is_empty(), "name is required"),
                (!COLUMN_TYPES.contains(&ty), "type must be integer/number/string/boolean/date"),
                (!format.is_empty() && !COLUMN_FORMATS.contains(&format), "unknown format"),
                (!str_at(col, "jsonPath").starts_with('.'), "jsonPath must start with '.'"),
            ]);
        }
        let schema_path = format!("{path}.schema.openAPIV3Schema");
        let Some(root) = version["schema"]["openAPIV3Schema"].as_object() else {
            return self.err(&schema_path, "required, and must be a schema object");
        };
        let ctx = Ctx {
            root: true,
            ..Ctx::default()
        };
        self.node(root, &schema_path, &ctx);
        let sub = &version["subresources"];
        if !sub["status"].is_null() && prop(root, "status").is_none() && !flag(root, PRESERVE) {
            let msg = "the schema has no status property, so status is pruned (lint)";
            self.err(&format!("{path}.subresources.status"), msg);
        }
        let Some(scale) = sub.get("scale").filter(|scale| !scale.is_null()) else {
            return;
        };
        let paths = [
            ("specReplicasPath", &[".spec."][..], "integer"),
            ("statusReplicasPath", &[".status."][..], "integer"),
            ("labelSelectorPath", &[".spec.", ".status."][..], "string"),
        ];
        for (key, prefixes, ty) in paths {
            let p = format!("{path}.subresources.scale.{key}");
            let json_path = str_at(scale, key);
            if json_path.is_empty() {
                self.report(&p, &[(key != "labelSelectorPath", "required")]);
            } else if !prefixes.iter().any(|prefix| json_path.starts_with(prefix)) {
                self.err(&p, format!("must start with {}", prefixes.join(" or ")));
            } else {
                match resolve(root, json_path) {
                    Target::Pruned => self.err(&p, "is not in the schema, so it is pruned (lint)"),
                    Target::Field(f) if type_of(f) != ty => {
                        self.err(&p, format!("should point to a field of type {ty} (lint)"));
                    }
                    _ => {}
                }
            }
        }
    }

    /// A node of the structural schema: the root, or one reached through
    /// properties, items or additionalProperties.
    fn node(&mut self, s: &Schema, path: &str, ctx: &Ctx) {
        self.common(s, path);
        let (ty, root, has) = (type_of(s), ctx.root, |key| field(s, key).is_some());
        let (preserve, embedded) = (flag(s, PRESERVE), flag(s, EMBEDDED));
        let int_or_string = flag(s, INT_OR_STRING);
        let untyped = ty.is_empty() && !int_or_string && !preserve;
        let (additional, no_fields) = (has("additionalProperties"), props(s).next().is_none());
        #[rustfmt::skip]
        self.report(path, &[
            (embedded && ty != "object", "x-kubernetes-embedded-resource needs type: object"),
            (!embedded && root && ty != "object", "root must be type: object (structural rule 1)"),
            (!embedded && !root && untyped, "missing non-empty type (structural rule 1)"),
            (ty == "array" && !has("items"), "type: array needs items"),
            (root && additional, "additionalProperties is not allowed at the root"),
            (root && flag(s, "nullable"), "nullable is not allowed at the root"),
            (int_or_string && preserve, "int-or-string excludes preserve-unknown-fields"),
            (int_or_string && embedded, "int-or-string excludes embedded-resource"),
            (embedded && ctx.in_meta, "embedded-resource is not allowed inside resource metadata"),
            (embedded && additional, "embedded-resource excludes additionalProperties"),
            (embedded && !preserve && no_fields, "embedded-resource needs properties"),
        ]);
        if root || embedded {
            self.resource_meta(s, path, root);
        }
        if let Some(default) = field(s, "default") {
            let path = format!("{path}.default");
            match &ctx.no_defaults {
                Some(reason) => self.err(&path, format!("must not be set {reason}")),
                None => self.default_value(s, default, &path),
            }
        }
        let skip_any_of = is_int_or_string_any_of(s.get("anyOf"));
        let first_all_of = s
            .get("allOf")
            .and_then(|all_of| all_of.get(0)?.get("anyOf"));
        self.junctors(s, path, skip_any_of, is_int_or_string_any_of(first_all_of));
        self.complete(s, s, path, path);

        if let Some(items) = s.get("items").and_then(Value::as_object) {
            self.node(
                items,
                &format!("{path}.items"),
                &ctx.child(ctx.in_meta, None),
            );
        }
        for (key, p) in props(s) {
            let path = format!("{path}.properties.{key}");
            let Some(p) = p.as_object() else {
                self.err(&path, "must be a schema object");
                continue;
            };
            let meta = (root || embedded) && META_FIELDS.contains(&key.as_str());
            let reason = (meta && root).then(|| format!("in top-level {key}"));
            self.node(p, &path, &ctx.child(ctx.in_meta || meta, reason));
        }
        if let Some(additional) = s.get("additionalProperties").and_then(Value::as_object) {
            let reason = ctx
                .in_meta
                .then(|| "inside additionalProperties of metadata".into());
            let path = format!("{path}.additionalProperties");
            self.node(additional, &path, &ctx.child(ctx.in_meta, reason));
        }
    }

    /// Checks that hold for every schema, structural or inside a junctor.
    fn common(&mut self, s: &Schema, path: &str) {
        for key in UNSUPPORTED
            .into_iter()
            .filter(|key| field(s, key).is_some())
        {
            self.err(path, format!("{key} is not supported in v1"));
        }
        let ty = field(s, "type").map(|t| t.as_str().unwrap_or("?"));
        let bad_type = ty.is_some_and(|t| !t.is_empty() && !TYPES.contains(&t));
        let not_object = |key| field(s, key).is_some_and(|v| !v.is_object());
        let additional = field(s, "additionalProperties").filter(|a| !a.is_boolean());
        let exclusive = field(s, "additionalProperties").is_some_and(|a| a != true);
        let has_props = props(s).next().is_some();
        #[rustfmt::skip]
        self.report(path, &[
            (flag(s, "uniqueItems"), "uniqueItems must not be true"),
            (s.get(PRESERVE) == Some(&json!(false)), "preserve-unknown-fields must not be false"),
            (bad_type, "type must be array, boolean, integer, number, object or string"),
            (not_object("items"), "items must be a single schema, not a list"),
            (not_object("properties"), "properties must be a map of schemas"),
            (additional.is_some_and(|a| !a.is_object()), "additionalProperties must be a schema"),
            (has_props && exclusive, "properties and additionalProperties are mutually exclusive"),
        ]);
        self.list_type(s, path);
    }

    /// `x-kubernetes-list-type` and `x-kubernetes-list-map-keys`.
    fn list_type(&mut self, s: &Schema, path: &str) {
        let map_keys = s.get("x-kubernetes-list-map-keys");
        let list_type = field(s, "x-kubernetes-list-type").map(|t| t.as_str().unwrap_or("?"));
        let (is_map, has_keys) = (list_type == Some("map"), is_set(map_keys));
        let known = list_type.is_none_or(|t| matches!(t, "atomic" | "set" | "map"));
        let not_array = list_type.is_some() && type_of(s) != "array";
        #[rustfmt::skip]
        self.report(path, &[
            (not_array, "x-kubernetes-list-type needs type: array"),
            (!known, "x-kubernetes-list-type must be atomic, set or map"),
            (!is_map && has_keys, "x-kubernetes-list-map-keys needs x-kubernetes-list-type: map"),
            (is_map && !has_keys, "x-kubernetes-list-type: map needs x-kubernetes-list-map-keys"),
        ]);
        if !is_map {
            return;
        }
        let items_path = format!("{path}.items");
        let items = s.get("items").and_then(Value::as_object);
        let Some(items) = items.filter(|items| type_of(items) == "object") else {
            return self.err(&items_path, "must be of type object in a list of type map");
        };
        let required = items.get("required").and_then(Value::as_array);
        let mut seen = HashSet::new();
        let keys = map_keys.and_then(Value::as_array).into_iter().flatten();
        for key in keys.filter_map(Value::as_str) {
            let key_path = format!("{items_path}.properties.{key}");
            let Some(p) = prop(items, key) else {
                self.err(
                    &key_path,
                    "is in x-kubernetes-list-map-keys, so it must exist",
                );
                continue;
            };
            let required = required.is_some_and(|r| r.iter().any(|r| r.as_str() == Some(key)));
            let defaulted = p.contains_key("default");
            #[rustfmt::skip]
            self.report(&key_path, &[
                (!seen.insert(key), "is listed twice in x-kubernetes-list-map-keys"),
                (matches!(type_of(p), "object" | "array"), "a list-map key must be a scalar"),
                (!required && !defaulted, "a list-map key must be required or have a default"),
                (flag(p, "nullable"), "a list-map key must not be nullable"),
            ]);
        }
    }

    /// TypeMeta/ObjectMeta of the root or an embedded resource; rule 4 at the root.
    fn resource_meta(&mut self, s: &Schema, path: &str, root: bool) {
        for key in ["kind", "apiVersion"] {
            if prop(s, key).is_some_and(|p| type_of(p) != "string") {
                self.err(
                    &format!("{path}.properties.{key}"),
                    "must be of type string",
                );
            }
        }
        let Some(meta) = prop(s, "metadata") else {
            return;
        };
        let path = format!("{path}.properties.metadata");
        if type_of(meta) != "object" {
            self.err(&path, "must be of type object");
        }
        for (key, value) in meta.iter().filter(|_| root) {
            match key.as_str() {
                "type" | "default" => {}
                "properties" => {
                    let fields = value.as_object().into_iter().flat_map(Map::keys);
                    for field in fields.filter(|f| *f != "name" && *f != "generateName") {
                        self.err(&format!("{path}.properties.{field}"), RULE_4);
                    }
                }
                _ if is_set(Some(value)) => self.err(&format!("{path}.{key}"), RULE_4),
                _ => {}
            }
        }
    }

    /// Rule 3: `allOf`/`anyOf`/`oneOf`/`not` may only validate, never declare.
    fn junctors(&mut self, s: &Schema, path: &str, skip_any_of: bool, skip_first_any_of: bool) {
        for key in ["allOf", "anyOf", "oneOf"] {
            let Some(list) = field(s, key).filter(|_| !(key == "anyOf" && skip_any_of)) else {
                continue;
            };
            let Some(list) = list.as_array() else {
                self.err(path, format!("{key} must be a list"));
                continue;
            };
            for (i, sub) in list.iter().enumerate() {
                let skip = key == "allOf" && i == 0 && skip_first_any_of;
                self.nested(sub, &format!("{path}.{key}[{i}]"), skip);
            }
        }
        if let Some(not) = field(s, "not") {
            self.nested(not, &format!("{path}.not"), false);
        }
    }

    fn nested(&mut self, v: &Value, path: &str, skip_any_of: bool) {
        let Some(s) = v.as_object() else {
            return self.err(path, "must be a schema object");
        };
        self.common(s, path);
        let absent = NESTED_ABSENT.iter().filter(|key| field(s, key).is_some());
        for key in absent.chain(NESTED_EMPTY.iter().filter(|key| is_set(s.get(**key)))) {
            self.err(&format!("{path}.{key}"), RULE_3);
        }
        if prop_value(s, "metadata").is_some() {
            self.err(&format!("{path}.properties.metadata"), RULE_3);
        }
        self.junctors(s, path, skip_any_of, false);
        if let Some(items) = s.get("items").filter(|items| items.is_object()) {
            self.nested(items, &format!("{path}.items"), false);
        }
        for (key, p) in props(s) {
            self.nested(p, &format!("{path}.properties.{key}"), false);
        }
    }

    /// Rule 2: what the junctors of `v` declare, the structural `s` must declare too.
    fn complete(&mut self, v: &Schema, s: &Schema, s_path: &str, v_path: &str) {
        for key in ["allOf", "anyOf", "oneOf"] {
            let list = v.get(key).and_then(Value::as_array).into_iter().flatten();
            for (i, sub) in list.enumerate() {
                self.complete_nested(sub, s, s_path, &format!("{v_path}.{key}[{i}]"));
            }
        }
        if let Some(not) = v.get("not") {
            self.complete_nested(not, s, s_path, &format!("{v_path}.not"));
        }
    }

    fn complete_nested(&mut self, v: &Value, s: &Schema, s_path: &str, v_path: &str) {
        let Some(v) = v.as_object() else { return };
        self.complete(v, s, s_path, v_path);
        let items = v
            .get("items")
            .map(|i| ("items".to_string(), i, s.get("items")));
        let fields = props(v).map(|(k, p)| (format!("properties.{k}"), p, prop_value(s, k)));
        for (child, v_child, s_child) in items.into_iter().chain(fields) {
            let (s_path, v_path) = (format!("{s_path}.{child}"), format!("{v_path}.{child}"));
            if let Some(s_child) = s_child.and_then(Value::as_object) {
                self.complete_nested(v_child, s_child, &s_path, &v_path);
            } else {
                let msg = format!("must be declared since {v_path} is (structural rule 2)");
                self.err(&s_path, msg);
            }
        }
    }

    /// A default must fit its schema (type, null, enum) and hold nothing pruning drops.
    fn default_value(&mut self, s: &Schema, v: &Value, path: &str) {
        if v.is_null() {
            let rule = (!flag(s, "nullable"), "null needs nullable: true");
            return self.report(path, &[rule]);
        }
        let enum_values = s.get("enum").and_then(Value::as_array);
        if enum_values.is_some_and(|values| !values.contains(v)) {
            self.err(path, format!("{v} is not one of the enum values"));
        }
        let fits = match type_of(s) {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => is_int(v),
            "number" => v.is_number(),
            _ => !flag(s, INT_OR_STRING) || v.is_string() || is_int(v),
        };
        if !fits {
            let ty = Some(type_of(s)).filter(|t| !t.is_empty());
            let ty = ty.unwrap_or("int-or-string");
            return self.err(path, format!("does not match type {ty}"));
        }
        let additional = s.get("additionalProperties");
        let items = s.get("items").and_then(Value::as_object);
        if let (Value::Array(values), Some(items)) = (v, items) {
            for (i, x) in values.iter().enumerate() {
                self.default_value(items, x, &format!("{path}[{i}]"));
            }
        }
        for (key, x) in v.as_object().into_iter().flatten() {
            let path = format!("{path}.{key}");
            let type_meta = flag(s, EMBEDDED) && META_FIELDS.contains(&key.as_str());
            match (prop(s, key), additional) {
                (Some(sub), _) | (None, Some(Value::Object(sub))) => {
                    self.default_value(sub, x, &path);
                }
                _ if flag(s, PRESERVE) || keeps_unknown(s) || type_meta => {}
                _ => self.err(&path, "unknown field, which pruning drops"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "spec.versions[0].schema.openAPIV3Schema";
    const SPEC: &str = "spec.versions[0].schema.openAPIV3Schema.properties.spec";

    /// A CRD for `pools.sandbox.example.io` with `root` as its schema and a
    /// status subresource.
    fn crd(root: &Value) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "pools.sandbox.example.io"},
            "spec": {
                "group": "sandbox.example.io",
                "names": {
                    "plural": "pools", "singular": "pool", "kind": "Pool", "listKind": "PoolList",
                },
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1alpha1",
                    "served": true,
                    "storage": true,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                }],
            },
        })
    }

    /// A root schema whose `.spec` is `spec`.
    fn root_with(spec: &Value) -> Value {
        json!({
            "type": "object",
            "properties": {"spec": spec, "status": {"type": "object"}},
        })
    }

    /// The findings for a root whose `metadata` property is `metadata`.
    fn check_metadata(metadata: &Value) -> Vec<String> {
        let mut root = root_with(&json!({"type": "object"}));
        root["properties"]["metadata"] = metadata.clone();
        check_crd(&crd(&root))
    }

    fn check_spec(spec: &Value) -> Vec<String> {
        check_crd(&crd(&root_with(spec)))
    }

    #[track_caller]
    fn assert_only(errs: &[String], expected: &str) {
        assert_eq!(errs, [expected]);
    }

    fn good_crd() -> Value {
        let int_or_string = json!([{"type": "integer"}, {"type": "string"}]);
        let mut crd = crd(&json!({
            "type": "object",
            "description": "A pool of warm sandboxes.",
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 63}},
                },
                "spec": {
                    "type": "object",
                    "properties": {
                        "replicas": {"type": "integer", "minimum": 0, "default": 1},
                        "mode": {"type": "string", "enum": ["warm", "cold"], "default": "warm"},
                        "port": {"x-kubernetes-int-or-string": true, "anyOf": int_or_string},
                        "maxSurge": {
                            "x-kubernetes-int-or-string": true,
                            "allOf": [{"anyOf": int_or_string}, {"pattern": "^[0-9]+%?$"}],
                        },
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "ports": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["name", "protocol"],
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "protocol": {"type": "string", "default": "TCP"},
                                },
                            },
                        },
                        "tags": {
                            "type": "array",
                            "x-kubernetes-list-type": "set",
                            "items": {"type": "string"},
                        },
                        "template": {
                            "type": "object",
                            "x-kubernetes-embedded-resource": true,
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {"metadata": {"type": "object", "description": "Pod"}},
                        },
                        "source": {
                            "type": "object",
                            "properties": {"image": {"type": "string"}, "git": {"type": "string"}},
                            "oneOf": [{"required": ["image"]}, {"required": ["git"]}],
                            "not": {"properties": {"image": {"pattern": "^$"}}},
                        },
                        "resources": {
                            "type": "object",
                            "default": {"cpu": "1", "memory": "1Gi"},
                            "additionalProperties": {"type": "string"},
                        },
                        "extra": {"x-kubernetes-preserve-unknown-fields": true},
                    },
                },
                "status": {
                    "type": "object",
                    "properties": {"replicas": {"type": "integer"}, "selector": {"type": "string"}},
                },
            },
        }));
        crd["spec"]["versions"][0]["subresources"]["scale"] = json!({
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        });
        crd["spec"]["versions"][0]["additionalPrinterColumns"] = json!([
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Age", "type": "date", "format": "date-time", "jsonPath": ".metadata.name"},
        ]);
        crd
    }

    #[test]
    fn good_crd_passes() {
        assert_eq!(check_crd(&good_crd()), Vec::<String>::new());
    }

    #[test]
    fn crd_names_and_versions() {
        let mut crd = good_crd();
        crd["metadata"]["name"] = json!("pools");
        let version = crd["spec"]["versions"][0].clone();
        crd["spec"]["versions"] =
            json!([version, {"name": "v1", "served": "yes", "storage": true}]);
        assert_eq!(
            check_crd(&crd),
            [
                concat!(
                    r#"metadata.name: must be spec.names.plural + "." + spec.group = "#,
                    r#""pools.sandbox.example.io""#,
                ),
                "spec.versions: exactly one version must have storage: true, not 2",
                "spec.versions[1].schema.openAPIV3Schema: required, and must be a schema object",
                "spec.versions[1].served: must be a boolean",
            ]
        );
    }

    #[test]
    fn rule_1_every_node_has_a_type() {
        let spec = json!({"type": "object", "properties": {"x": {"description": "untyped"}}});
        let expected = format!("{SPEC}.properties.x: missing non-empty type (structural rule 1)");
        assert_only(&check_spec(&spec), &expected);

        let root = json!({"x-kubernetes-preserve-unknown-fields": true});
        let expected = format!("{ROOT}: root must be type: object (structural rule 1)");
        assert_only(&check_crd(&crd(&root)), &expected);
    }

    #[test]
    fn rule_2_junctors_declare_nothing_new() {
        let spec = json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "anyOf": [{"properties": {"b": {"minimum": 1}}}],
        });
        let (outside, inside) = (
            format!("{SPEC}.properties.b"),
            format!("{SPEC}.anyOf[0].properties.b"),
        );
        assert_only(
            &check_spec(&spec),
            &format!("{outside}: must be declared since {inside} is (structural rule 2)"),
        );

        let spec = json!({"type": "object", "allOf": [{"items": {}}]});
        let (outside, inside) = (format!("{SPEC}.items"), format!("{SPEC}.allOf[0].items"));
        assert_only(
            &check_spec(&spec),
            &format!("{outside}: must be declared since {inside} is (structural rule 2)"),
        );
    }

    #[test]
    fn rule_3_junctors_only_validate() {
        let spec = json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "anyOf": [{
                "description": "why",
                "properties": {"a": {"type": "string", "default": "x"}},
            }],
        });
        assert_eq!(
            check_spec(&spec),
            [
                format!("{SPEC}.anyOf[0].description: {RULE_3}"),
                format!("{SPEC}.anyOf[0].properties.a.default: {RULE_3}"),
                format!("{SPEC}.anyOf[0].properties.a.type: {RULE_3}"),
            ]
        );
        // Only the exact int-or-string pattern may set type.
        let spec = json!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string", "nullable": true}],
        });
        assert_eq!(
            check_spec(&spec),
            [
                format!("{SPEC}.anyOf[0].type: {RULE_3}"),
                format!("{SPEC}.anyOf[1].nullable: {RULE_3}"),
                format!("{SPEC}.anyOf[1].type: {RULE_3}"),
            ]
        );
    }

    #[test]
    fn rule_4_metadata_restricts_only_name_and_generate_name() {
        let metadata = json!({
            "type": "object",
            "description": "standard metadata",
            "properties": {"name": {"type": "string"}, "labels": {"type": "object"}},
        });
        assert_eq!(
            check_metadata(&metadata),
            [
                format!("{ROOT}.properties.metadata.description: {RULE_4}"),
                format!("{ROOT}.properties.metadata.properties.labels: {RULE_4}"),
            ]
        );
    }

    #[test]
    fn v1_bans() {
        let banned = [
            ("$ref", json!("#/definitions/x")),
            ("$schema", json!("http://json-schema.org/draft-04/schema#")),
            ("id", json!("x")),
            ("definitions", json!({"x": {"type": "string"}})),
            ("patternProperties", json!({"^x": {"type": "string"}})),
            ("dependencies", json!({"a": ["b"]})),
            ("additionalItems", json!(false)),
        ];
        for (key, value) in banned {
            let mut spec = json!({"type": "object"});
            spec[key] = value;
            assert_only(
                &check_spec(&spec),
                &format!("{SPEC}: {key} is not supported in v1"),
            );
        }
        let spec = json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true});
        assert_only(
            &check_spec(&spec),
            &format!("{SPEC}: uniqueItems must not be true"),
        );
        let spec = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": false});
        assert_only(
            &check_spec(&spec),
            &format!("{SPEC}: preserve-unknown-fields must not be false"),
        );
        let spec = json!({"type": "null"});
        let expected =
            format!("{SPEC}: type must be array, boolean, integer, number, object or string");
        assert_only(&check_spec(&spec), &expected);
    }

    #[test]
    fn properties_and_additional_properties_exclude_each_other() {
        let exclusive =
            format!("{SPEC}: properties and additionalProperties are mutually exclusive");
        let spec = json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "additionalProperties": {"type": "string"},
        });
        assert_only(&check_spec(&spec), &exclusive);
        let spec = json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "additionalProperties": false,
        });
        assert_only(&check_spec(&spec), &exclusive);
    }

    #[test]
    fn arrays_need_one_items_schema() {
        assert_only(
            &check_spec(&json!({"type": "array"})),
            &format!("{SPEC}: type: array needs items"),
        );
        let spec = json!({"type": "array", "items": [{"type": "string"}]});
        assert_only(
            &check_spec(&spec),
            &format!("{SPEC}: items must be a single schema, not a list"),
        );
    }

    #[test]
    fn list_types() {
        let spec = json!({
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        });
        let expected = "a list-map key must be required or have a default";
        assert_only(
            &check_spec(&spec),
            &format!("{SPEC}.items.properties.name: {expected}"),
        );

        let spec =
            json!({"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "object"}});
        let expected = "x-kubernetes-list-type: map needs x-kubernetes-list-map-keys";
        assert_only(&check_spec(&spec), &format!("{SPEC}: {expected}"));

        let spec = json!({"type": "string", "x-kubernetes-list-type": "set"});
        let expected = "x-kubernetes-list-type needs type: array";
        assert_only(&check_spec(&spec), &format!("{SPEC}: {expected}"));
    }

    #[test]
    fn embedded_resource_needs_object() {
        let spec = json!({
            "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true,
        });
        let expected = format!("{SPEC}: x-kubernetes-embedded-resource needs type: object");
        assert_only(&check_spec(&spec), &expected);
    }

    #[test]
    fn status_subresource_needs_status_in_schema() {
        let root = json!({"type": "object", "properties": {"spec": {"type": "object"}}});
        let expected = "spec.versions[0].subresources.status: \
                        the schema has no status property, so status is pruned (lint)";
        assert_only(&check_crd(&crd(&root)), expected);
    }

    #[test]
    fn scale_paths_point_into_the_schema() {
        let mut crd = good_crd();
        crd["spec"]["versions"][0]["subresources"]["scale"] = json!({
            "specReplicasPath": ".spec.size",
            "statusReplicasPath": ".status.selector",
            "labelSelectorPath": "status.selector",
        });
        let scale = "spec.versions[0].subresources.scale";
        assert_eq!(
            check_crd(&crd),
            [
                format!("{scale}.labelSelectorPath: must start with .spec. or .status."),
                format!("{scale}.specReplicasPath: is not in the schema, so it is pruned (lint)"),
                format!(
                    "{scale}.statusReplicasPath: should point to a field of type integer (lint)"
                ),
            ]
        );
    }

    #[test]
    fn printer_columns() {
        let mut crd = good_crd();
        crd["spec"]["versions"][0]["additionalPrinterColumns"] =
            json!([{"name": "", "type": "int", "format": "name", "jsonPath": "spec.replicas"}]);
        let column = "spec.versions[0].additionalPrinterColumns[0]";
        assert_eq!(
            check_crd(&crd),
            [
                format!("{column}: jsonPath must start with '.'"),
                format!("{column}: name is required"),
                format!("{column}: type must be integer/number/string/boolean/date"),
                format!("{column}: unknown format"),
            ]
        );
    }

    #[test]
    fn defaults() {
        let metadata = json!({
            "type": "object",
            "properties": {"name": {"type": "string", "default": "pool"}},
        });
        let name = format!("{ROOT}.properties.metadata.properties.name");
        let expected = format!("{name}.default: must not be set in top-level metadata");
        assert_only(&check_metadata(&metadata), &expected);

        let spec = json!({
            "type": "object",
            "properties": {
                "replicas": {"type": "integer", "default": "3"},
                "mode": {"type": "string", "enum": ["warm", "cold"], "default": "hot"},
                "limits": {
                    "type": "object",
                    "properties": {"cpu": {"type": "string"}},
                    "default": {"cpu": "1", "gpu": "1"},
                },
                "note": {"type": "string", "default": null},
            },
        });
        assert_eq!(
            check_spec(&spec),
            [
                format!("{SPEC}.properties.limits.default.gpu: unknown field, which pruning drops"),
                format!("{SPEC}.properties.mode.default: \"hot\" is not one of the enum values"),
                format!("{SPEC}.properties.replicas.default: does not match type integer"),
            ]
        );
    }

    #[test]
    fn malformed_input_becomes_messages() {
        for crd in [
            json!(null),
            json!([1, 2]),
            json!({"spec": {"versions": [3]}}),
        ] {
            assert!(!check_crd(&crd).is_empty());
        }
        let status = json!({"type": "object", "properties": []});
        let root = json!({"type": "object", "properties": {"spec": 3, "status": status}});
        assert_eq!(
            check_crd(&crd(&root)),
            [
                format!("{ROOT}.properties.spec: must be a schema object"),
                format!("{ROOT}.properties.status: properties must be a map of schemas"),
            ]
        );
    }
}
