//! The message a broadcast speaks, made from the alert group's
//! annotations: short, speakable sentences rather than a runbook.

use super::MESSAGE_ANNOTATION;
use super::payload::Notification;

/// Spoken messages are cut (at a word) to this many characters: a call is
/// not the place for a runbook.
pub const MAX_SPOKEN: usize = 600;

impl Notification {
    /// The message to speak: `tocsin_message` if the group has one, else
    /// the summary and description, whitespace collapsed and cut at a word
    /// to `MAX_SPOKEN` characters. Nothing is escaped here: this is text to
    /// be spoken, and each provider's answer document escapes it for its
    /// own format.
    pub fn message(&self) -> String {
        if let Some(m) = self.common_annotations.get(MESSAGE_ANNOTATION).map(|m| speakable(m))
            && !m.is_empty()
        {
            return cut(&m);
        }
        let firing = self.firing();
        let only = (firing.len() == 1).then(|| firing[0]);
        let annotation = |key: &str| {
            self.common_annotations
                .get(key)
                .or_else(|| only.and_then(|a| a.annotations.get(key)))
                .map(|s| speakable(s))
                .filter(|s| !s.is_empty())
        };
        let severity = self
            .common_labels
            .get("severity")
            .map(|s| speakable(s))
            .filter(|s| !s.is_empty())
            .map(|s| format!("{s} "))
            .unwrap_or_default();
        let head = match firing.len() {
            1 => format!("{severity}alert"),
            n => format!("{n} {severity}alerts firing"),
        };
        let head = capitalise(&head);
        let mut text = match (annotation("summary"), annotation("description")) {
            (Some(s), Some(d)) if s != d => format!("{head}: {}. {}", sentence(&s), sentence(&d)),
            (Some(s), _) | (None, Some(s)) => format!("{head}: {}", sentence(&s)),
            (None, None) => {
                let name = self.alertname().map(speakable).unwrap_or_else(|| "unnamed".into());
                format!("{head}: {name} is firing.")
            }
        };
        if !text.ends_with(['.', '!', '?']) {
            text.push('.');
        }
        cut(&text)
    }
}

/// Whitespace (newlines, tabs) collapsed to single spaces, control
/// characters dropped, and `{{` / `}}` broken up: an alert's text is not a
/// personalised message (an unrendered Go template such as
/// `{{ $labels.instance }}` would otherwise be refused as a placeholder).
fn speakable(s: &str) -> String {
    s.split_whitespace()
        .map(|w| w.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace("{{", "{ {")
        .replace("}}", "} }")
}

/// A clause without its own final full stop (one is added after it).
fn sentence(s: &str) -> String {
    s.trim_end_matches('.').to_owned()
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// At most `MAX_SPOKEN` characters, cut at a word.
fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_SPOKEN {
        return s.to_owned();
    }
    let head: String = s.chars().take(MAX_SPOKEN).collect();
    let head = match head.rfind(' ') {
        Some(i) if i > MAX_SPOKEN / 2 => head[..i].to_owned(),
        _ => head,
    };
    format!("{}.", head.trim_end_matches(['.', ',', ';', ':']))
}

#[cfg(test)]
mod tests {
    use super::{MAX_SPOKEN, speakable};
    use crate::api::alertmanager::payload::sample as notification;

    #[test]
    fn an_unrendered_go_template_is_spoken_not_taken_for_a_placeholder() {
        let text = speakable("Disk full on {{ $labels.instance }}");
        assert_eq!(text, "Disk full on { { $labels.instance } }");
        assert!(!tocsin_core::template::Template::parse(&text).unwrap().is_personal());
    }

    #[test]
    fn messages_are_short_speakable_sentences_from_the_annotations() {
        let n = notification(
            &[("summary", "Disk almost full on db-1."), ("description", "Only 3%\n\tleft <on> /var & /tmp")],
            &[(&[], "firing")],
        );
        assert_eq!(n.message(), "Critical alert: Disk almost full on db-1. Only 3% left <on> /var & /tmp.");
        let n = notification(&[], &[(&[("summary", "one")], "firing"), (&[("summary", "two")], "firing")]);
        assert_eq!(n.message(), "2 critical alerts firing: Disk Full! is firing.");
        let n = notification(&[], &[(&[("description", "only a description")], "firing"), (&[], "resolved")]);
        assert_eq!(n.message(), "Critical alert: only a description.");
        let n = notification(&[("tocsin_message", "  Call   the\nbridge. ")], &[(&[], "firing")]);
        assert_eq!(n.message(), "Call the bridge.");
        let long = "word ".repeat(400);
        let n = notification(&[("summary", &long)], &[(&[], "firing")]);
        let m = n.message();
        assert!(m.chars().count() <= MAX_SPOKEN + 1 && m.ends_with("word."), "{m}");
    }
}
