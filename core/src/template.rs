//! Personalised messages, owned once: `{{name}}` in a campaign's message
//! (or voicemail) is filled from the contact's own columns when the call is
//! answered, `{{name|there}}` with a default when the contact has no value.
//! A contact whose message cannot be filled (a placeholder with no value and
//! no default) is rejected when it is enqueued, so every call placed can be
//! spoken. The result is plain text: each provider's format escapes it as
//! it escapes any message (NCCO JSON, TwiML XML, Telnyx JSON).

use serde_json::{Map, Value};

/// The longest placeholder name.
const NAME_CHARS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field { name: String, default: Option<String> },
}

/// A message with its placeholders found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Reads `text`; the error says what is wrong and where (an unclosed
    /// `{{`, an empty or unusable name).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                let at = text.len() - rest.len() + open;
                return Err(format!(
                    "the placeholder opened at character {} is never closed with }}}}",
                    at + 1
                ));
            };
            let inner = &after[..close];
            let (name, default) = match inner.split_once('|') {
                Some((n, d)) => (n.trim(), Some(d.trim().to_owned())),
                None => (inner.trim(), None),
            };
            let usable = !name.is_empty()
                && name.chars().count() <= NAME_CHARS
                && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '));
            if !usable {
                return Err(format!(
                    "{{{{{inner}}}}} is not a placeholder: write {{{{column}}}} or {{{{column|default}}}} with a \
                     column name of letters, digits, '_', '-', '.' or spaces"
                ));
            }
            parts.push(Part::Field { name: name.to_owned(), default });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Whether the text has any placeholder.
    pub fn is_personal(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field { .. }))
    }

    /// The text with each placeholder filled from `columns` (a contact's
    /// attributes): its value, else its default; `Err` names the first
    /// placeholder with neither.
    pub fn render(&self, columns: &Map<String, Value>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field { name, default } => {
                    let value = match columns.get(name) {
                        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        Some(Value::Bool(b)) => Some(b.to_string()),
                        _ => None,
                    };
                    match (value, default) {
                        (Some(v), _) => out.push_str(&v),
                        (None, Some(d)) => out.push_str(d),
                        (None, None) => {
                            return Err(format!(
                                "no value for {{{{{name}}}}} and no default (write {{{{{name}|…}}}})"
                            ));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `text` filled from a contact's attributes (JSON object text); a text
/// without placeholders comes back as it is. A placeholder that cannot be
/// filled (the message changed after the contact was enqueued) is left out.
pub fn personalise(text: &str, attributes: &str) -> String {
    if !text.contains("{{") {
        return text.to_owned();
    }
    let Ok(template) = Template::parse(text) else { return text.to_owned() };
    let columns: Map<String, Value> = serde_json::from_str(attributes).unwrap_or_default();
    template.render(&columns).unwrap_or_else(|_| {
        let blank: Template = Template {
            parts: template
                .parts
                .iter()
                .map(|p| match p {
                    Part::Field { name, default } => {
                        Part::Field { name: name.clone(), default: Some(default.clone().unwrap_or_default()) }
                    }
                    other => other.clone(),
                })
                .collect(),
        };
        blank.render(&columns).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cols(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn placeholders_fill_from_columns_or_their_defaults() {
        let t = Template::parse("Hello {{name|there}}, shelter at {{ site }}.").unwrap();
        assert!(t.is_personal());
        assert_eq!(
            t.render(&cols(json!({"name": "Zoë <&> \"Ø\" 李", "site": "Gym"}))).unwrap(),
            "Hello Zoë <&> \"Ø\" 李, shelter at Gym."
        );
        assert_eq!(t.render(&cols(json!({"site": 4}))).unwrap(), "Hello there, shelter at 4.");
        assert_eq!(t.render(&cols(json!({"name": " ", "site": "x"}))).unwrap(), "Hello there, shelter at x.");
        let e = t.render(&cols(json!({"name": "Ann"}))).unwrap_err();
        assert!(e.contains("{{site}}"), "{e}");
        assert!(!Template::parse("No placeholders.").unwrap().is_personal());
    }

    #[test]
    fn bad_placeholders_are_named() {
        assert!(Template::parse("Hi {{name").unwrap_err().contains("never closed"));
        assert!(Template::parse("Hi {{}}").unwrap_err().contains("not a placeholder"));
        assert!(Template::parse("Hi {{a<b}}").unwrap_err().contains("not a placeholder"));
    }

    #[test]
    fn personalise_leaves_plain_text_alone_and_blanks_what_it_cannot_fill() {
        assert_eq!(personalise("Plain.", "{}"), "Plain.");
        assert_eq!(personalise("Hi {{name}}!", r#"{"name":"Ann"}"#), "Hi Ann!");
        assert_eq!(personalise("Hi {{name}}!", "{}"), "Hi !");
    }
}
