//! Parsed GraphQL documents, cached by their shape.
//!
//! Parsing is a third of what a small mutation costs the shell (the query's
//! pest grammar; a position costs a scan from the start of the text), and
//! clients that inline their arguments — `InviteCustomer(email: "a@b.c")`,
//! as GraphiQL and `curl` users do — send a new text with every request, so a
//! cache keyed by the whole text would never hit. The key here is the text
//! with each plain string argument's content replaced by its length in
//! characters: every token then keeps its line and column, so a document
//! parsed once serves every query of that shape with the strings put back.
//!
//! Only a string that is an argument's (or a variable's default) value
//! directly, with no escape, is taken out of the key; anything else stays in
//! it. A shape is cached only once a parse has confirmed that each string
//! taken out is a value at the position the key gives it, so a query the
//! cache answers gets the same document a parse would give.

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet, VariableDefinition};
use async_graphql::parser::{Pos, Positioned};
use async_graphql_value::{ConstValue, Value};
use std::sync::Arc;

/// Shapes kept (each a small document); the least used go first.
const SHAPES: usize = 1024;
/// Longer queries are parsed every time: they are rare, and their keys large.
const LONGEST: usize = 16 * 1024;

/// The cache of parsed documents. Cloning shares it.
#[derive(Clone)]
pub struct Documents {
    /// `None`: the shape's strings did not all turn out to be values there,
    /// so its queries are parsed every time.
    shapes: Arc<quick_cache::sync::Cache<String, Option<Arc<ExecutableDocument>>>>,
}

impl Default for Documents {
    fn default() -> Self {
        Self { shapes: Arc::new(quick_cache::sync::Cache::new(SHAPES)) }
    }
}

impl std::fmt::Debug for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documents").field("shapes", &self.shapes.len()).finish()
    }
}

/// A parsed query, with its shape's key when the cache holds its shape:
/// every query with that key then has this document but for the strings.
pub struct Parsed {
    pub document: ExecutableDocument,
    pub shape: Option<String>,
}

impl Documents {
    /// The document of `query`, as [`async_graphql::parser::parse_query`]
    /// gives it.
    pub fn parse(&self, query: &str) -> async_graphql::parser::Result<ExecutableDocument> {
        self.parse_shaped(query).map(|parsed| parsed.document)
    }

    /// [`Documents::parse`], with the key of the document's shape when it is cached.
    pub fn parse_shaped(&self, query: &str) -> async_graphql::parser::Result<Parsed> {
        let parsed = |document| Ok(Parsed { document, shape: None });
        let Some(shape) = Shape::of(query) else {
            return async_graphql::parser::parse_query(query).and_then(parsed);
        };
        if let Some(cached) = self.shapes.get(&shape.key) {
            if let Some(document) = cached {
                let mut document = ExecutableDocument::clone(&document);
                if shape.put_back(&mut document) {
                    return Ok(Parsed { document, shape: Some(shape.key) });
                }
            }
            return async_graphql::parser::parse_query(query).and_then(parsed);
        }
        let document = async_graphql::parser::parse_query(query)?;
        let confirmed = shape.confirmed_by(&document);
        let key = confirmed.then(|| shape.key.clone());
        self.shapes.insert(shape.key, confirmed.then(|| Arc::new(document.clone())));
        Ok(Parsed { document, shape: key })
    }
}

/// A query's key and the strings taken out of it, with where each starts.
struct Shape<'q> {
    key: String,
    strings: Vec<(Pos, &'q str)>,
}

impl<'q> Shape<'q> {
    /// `None` when the query is not worth a key (too long, or it has a NUL,
    /// which the key's markers use) or does not lex (the parser says why).
    fn of(query: &'q str) -> Option<Self> {
        if query.len() > LONGEST || query.contains('\0') {
            return None;
        }
        let mut key = String::with_capacity(query.len());
        let mut strings = vec![];
        // Where the text not yet copied into the key starts.
        let mut copied = 0;
        let (mut line, mut column) = (1, 1);
        // The last significant character outside strings and comments, and
        // the brackets open around it.
        let mut last = ' ';
        let mut open: Vec<char> = vec![];
        let mut chars = query.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            let start = Pos { line, column };
            column += 1;
            match c {
                '\n' => (line, column) = (line + 1, 1),
                // `\r\n` is one line break; a lone `\r` is a column (as the parser counts).
                '\r' if chars.peek().is_some_and(|&(_, n)| n == '\n') => {
                    chars.next();
                    (line, column) = (line + 1, 1);
                }
                '#' => {
                    // A comment runs to the end of the line; `\r` and `\n` are handled above.
                    while chars.next_if(|&(_, n)| n != '\n' && n != '\r').is_some() {
                        column += 1;
                    }
                }
                '"' if query[at..].starts_with("\"\"\"") => {
                    // A block string stays in the key, whatever it holds.
                    chars.next();
                    chars.next();
                    column += 2;
                    loop {
                        let (_, c) = chars.next()?;
                        column += 1;
                        match c {
                            // `\"""` is an escaped delimiter.
                            '\\' if chars.peek().is_some_and(|&(i, _)| query[i..].starts_with("\"\"\"")) => {
                                for _ in 0..3 {
                                    chars.next();
                                }
                                column += 3;
                            }
                            '"' if chars.peek().is_some_and(|&(i, _)| query[i..].starts_with("\"\"")) => {
                                chars.next();
                                chars.next();
                                break;
                            }
                            '\n' => (line, column) = (line + 1, 1),
                            '\r' if chars.peek().is_some_and(|&(_, n)| n == '\n') => {
                                chars.next();
                                (line, column) = (line + 1, 1);
                            }
                            _ => {}
                        }
                    }
                    last = '"';
                }
                '"' => {
                    let content = at + 1;
                    let mut escaped = false;
                    let end = loop {
                        let (i, c) = chars.next()?;
                        column += 1;
                        match c {
                            '"' => break i,
                            '\\' => {
                                escaped = true;
                                chars.next()?;
                                column += 1;
                            }
                            // Unterminated: the parser reports it.
                            '\n' | '\r' => return None,
                            _ => {}
                        }
                    };
                    let value = matches!(last, ':' | '=') && open.last() == Some(&'(');
                    if value && !escaped {
                        let text = &query[content..end];
                        key.push_str(&query[copied..at]);
                        key.push('\0');
                        key.push_str(&text.chars().count().to_string());
                        key.push('\0');
                        copied = end + 1;
                        strings.push((start, text));
                    }
                    last = '"';
                }
                '(' | '[' | '{' => {
                    open.push(c);
                    last = c;
                }
                ')' | ']' | '}' => {
                    open.pop();
                    last = c;
                }
                ' ' | '\t' | ',' | '\u{feff}' | '\r' => {}
                _ => last = c,
            }
        }
        key.push_str(&query[copied..]);
        Some(Self { key, strings })
    }

    /// Whether each string taken out is, in `document`, the value found at
    /// its position, and the only one there.
    fn confirmed_by(&self, document: &ExecutableDocument) -> bool {
        let mut found = vec![false; self.strings.len()];
        let mut all = true;
        let mut check = |pos: Pos, text: Option<&str>| {
            if let Some(i) = self.strings.iter().position(|(p, _)| *p == pos) {
                all &= !found[i] && text == Some(self.strings[i].1);
                found[i] = true;
            }
        };
        visit(document, &mut |value| match value {
            Visited::Value(v) => check(v.pos, if let Value::String(s) = &v.node { Some(s) } else { None }),
            Visited::Const(v) => {
                check(v.pos, if let ConstValue::String(s) = &v.node { Some(s) } else { None })
            }
        });
        all && found.iter().all(|f| *f)
    }

    /// Puts this query's strings into a document of its shape; `false` if
    /// one was not where the shape has it.
    fn put_back(&self, document: &mut ExecutableDocument) -> bool {
        let mut put = 0;
        visit_mut(document, &mut |pos, value| {
            if let Some((_, text)) = self.strings.iter().find(|(p, _)| *p == pos) {
                *value = (*text).to_owned();
                put += 1;
            }
        });
        put == self.strings.len()
    }
}

/// A value with a position of its own in a document.
enum Visited<'a> {
    Value(&'a Positioned<Value>),
    Const(&'a Positioned<ConstValue>),
}

/// Every positioned value of `document`: arguments (of fields and
/// directives) and variables' defaults, in operations and fragments.
fn visit<'a>(document: &'a ExecutableDocument, f: &mut impl FnMut(Visited<'a>)) {
    fn selections<'a>(set: &'a SelectionSet, f: &mut impl FnMut(Visited<'a>)) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    field.node.arguments.iter().for_each(|(_, v)| f(Visited::Value(v)));
                    directives(&field.node.directives, f);
                    selections(&field.node.selection_set.node, f);
                }
                Selection::FragmentSpread(spread) => directives(&spread.node.directives, f),
                Selection::InlineFragment(fragment) => {
                    directives(&fragment.node.directives, f);
                    selections(&fragment.node.selection_set.node, f);
                }
            }
        }
    }
    fn directives<'a>(
        list: &'a [Positioned<async_graphql::parser::types::Directive>],
        f: &mut impl FnMut(Visited<'a>),
    ) {
        list.iter().flat_map(|d| &d.node.arguments).for_each(|(_, v)| f(Visited::Value(v)));
    }
    fn variables<'a>(list: &'a [Positioned<VariableDefinition>], f: &mut impl FnMut(Visited<'a>)) {
        for definition in list {
            definition.node.default_value.iter().for_each(|v| f(Visited::Const(v)));
            directives(&definition.node.directives, f);
        }
    }
    for (_, operation) in document.operations.iter() {
        variables(&operation.node.variable_definitions, f);
        directives(&operation.node.directives, f);
        selections(&operation.node.selection_set.node, f);
    }
    for fragment in document.fragments.values() {
        directives(&fragment.node.directives, f);
        selections(&fragment.node.selection_set.node, f);
    }
}

/// The strings of [`visit`]'s values, to be replaced: `f(position, string)`.
fn visit_mut(document: &mut ExecutableDocument, f: &mut impl FnMut(Pos, &mut String)) {
    fn value(v: &mut Positioned<Value>, f: &mut impl FnMut(Pos, &mut String)) {
        if let Value::String(s) = &mut v.node {
            f(v.pos, s);
        }
    }
    fn selections(set: &mut SelectionSet, f: &mut impl FnMut(Pos, &mut String)) {
        for item in &mut set.items {
            match &mut item.node {
                Selection::Field(field) => {
                    field.node.arguments.iter_mut().for_each(|(_, v)| value(v, f));
                    directives(&mut field.node.directives, f);
                    selections(&mut field.node.selection_set.node, f);
                }
                Selection::FragmentSpread(spread) => directives(&mut spread.node.directives, f),
                Selection::InlineFragment(fragment) => {
                    directives(&mut fragment.node.directives, f);
                    selections(&mut fragment.node.selection_set.node, f);
                }
            }
        }
    }
    fn directives(
        list: &mut [Positioned<async_graphql::parser::types::Directive>],
        f: &mut impl FnMut(Pos, &mut String),
    ) {
        list.iter_mut().flat_map(|d| &mut d.node.arguments).for_each(|(_, v)| value(v, f));
    }
    fn operation(
        operation: &mut Positioned<async_graphql::parser::types::OperationDefinition>,
        f: &mut impl FnMut(Pos, &mut String),
    ) {
        for definition in &mut operation.node.variable_definitions {
            if let Some(v) = &mut definition.node.default_value
                && let ConstValue::String(s) = &mut v.node
            {
                f(v.pos, s);
            }
            directives(&mut definition.node.directives, f);
        }
        directives(&mut operation.node.directives, f);
        selections(&mut operation.node.selection_set.node, f);
    }
    match &mut document.operations {
        async_graphql::parser::types::DocumentOperations::Single(op) => operation(op, f),
        async_graphql::parser::types::DocumentOperations::Multiple(ops) => {
            ops.values_mut().for_each(|op| operation(op, f))
        }
    }
    for fragment in document.fragments.values_mut() {
        directives(&mut fragment.node.directives, f);
        selections(&mut fragment.node.selection_set.node, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document as JSON, to compare a cached answer with a parse (its
    /// maps compare whatever their order).
    fn json(document: &ExecutableDocument) -> serde_json::Value {
        serde_json::to_value(document).unwrap_or_default()
    }

    /// Parses each query through one cache, twice, and checks every answer
    /// against a parse of its own.
    fn same_as_parsing(queries: &[&str]) -> Documents {
        let documents = Documents::default();
        for _ in 0..2 {
            for query in queries {
                let cached = documents.parse(query).map(|d| json(&d)).map_err(|e| e.to_string());
                let parsed =
                    async_graphql::parser::parse_query(query).map(|d| json(&d)).map_err(|e| e.to_string());
                assert_eq!(cached, parsed, "{query}");
            }
        }
        documents
    }

    #[test]
    fn a_query_of_a_known_shape_gets_its_own_strings_back() {
        let documents = same_as_parsing(&[
            r#"mutation { InviteCustomer(email: "a@b.c") { id invited } }"#,
            r#"mutation { InviteCustomer(email: "x@y.z") { id invited } }"#,
            r#"mutation { InviteCustomer(email: "longer@example.com") { id invited } }"#,
        ]);
        // Two shapes: two emails of one length, and a longer one; both
        // confirmed, so their queries are not parsed again.
        assert_eq!(documents.shapes.len(), 2);
        for email in ["a@b.c", "longer@example.com"] {
            let query = format!("mutation {{ InviteCustomer(email: \"{email}\") {{ id invited }} }}");
            let key = Shape::of(&query).map(|s| s.key).unwrap_or_default();
            assert!(matches!(documents.shapes.get(&key), Some(Some(_))), "{query}");
        }
    }

    #[test]
    fn strings_anywhere_else_stay_part_of_the_shape_and_come_out_as_parsed() {
        let queries = [
            // In lists and objects, escaped, in block strings, in comments.
            r#"{ customers(filter: {email: "a@b.c"}, tags: ["x", "y"]) { id } }"#,
            r#"{ customer(id: "a\"b\u00e9") { id } }"#,
            "{ customer(id: \"\"\"block \\\"\"\" \"still\"\n\"\"\") { id } }",
            "# a \"quoted\" comment\n{ customer(id: \"k\") { id } }",
            // Variables' defaults, directives, fragments, several operations.
            r#"query Q($id: ID = "d1") @cached(ttl: "5") { customer(id: $id) { ...F @include(if: true) } }
               fragment F on Customer { email(format: "lower") ... on Customer { id(x: "y") } }
               query R { customer(id: "r") { id } }"#,
            // Line breaks of each kind, and wide characters before a string.
            "{\r\n  customer(id: \"é\") {\r id\n }\r\n}",
            "{ a: customer(id: \"日本\") { id } b: customer(id: \"x\") { id } }",
            // Numbers, enums and the rest are the shape.
            r#"{ customers(first: 10, after: "c") { edges { node { id } } } }"#,
        ];
        let documents = same_as_parsing(&queries);
        // Every one of them is a shape the cache answers.
        for query in queries {
            let key = Shape::of(query).map(|s| s.key).unwrap_or_default();
            assert!(matches!(documents.shapes.get(&key), Some(Some(_))), "{query}");
        }
    }

    #[test]
    fn a_query_that_does_not_parse_gets_the_parsers_error() {
        same_as_parsing(&[
            r#"mutation { InviteCustomer(email: "a@b.c") { id "#,
            r#"mutation { InviteCustomer(email: "a@b.c) { id } }"#,
            "mutation { InviteCustomer(email: \"a\nb\") { id } }",
            r#"{ "strings": "are not fields" }"#,
            "",
        ]);
    }

    #[test]
    fn a_shape_whose_strings_are_not_where_the_parse_has_them_is_parsed_every_time() {
        let taken = r#"{ customer(id: "a") { id } }"#;
        let elsewhere = r#"{ customer(id: 1, x: "a") { id } }"#;
        let parsed = |q: &str| async_graphql::parser::parse_query(q).unwrap_or_else(|e| panic!("{e}"));
        let shape = Shape::of(taken).unwrap_or_else(|| panic!("no shape"));
        assert!(shape.confirmed_by(&parsed(taken)));
        assert!(!shape.confirmed_by(&parsed(elsewhere)));
        // A shape known to be unconfirmed is parsed, not put back.
        let documents = Documents::default();
        documents.shapes.insert(shape.key, None);
        let answer = documents.parse(taken).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json(&answer), json(&parsed(taken)));
    }
}
