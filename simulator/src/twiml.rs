//! Parses and validates TwiML answer documents as Twilio would before
//! running them: well-formed XML, a `<Response>` root, known verbs only,
//! `<Say>` with valid attributes and text. Returns what the call says.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// Verbs Twilio accepts inside `<Response>`.
const VERBS: [&str; 15] = [
    "Say", "Play", "Pause", "Hangup", "Gather", "Redirect", "Reject", "Dial", "Record", "Enqueue", "Leave",
    "Refer", "Connect", "Start", "Stop",
];

fn attributes(tag: &BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for attr in tag.attributes() {
        let attr = attr.map_err(|e| format!("bad attribute: {e}"))?;
        let name = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| format!("bad value of {name}: {e}"))?
            .into_owned();
        out.push((name, value));
    }
    Ok(out)
}

/// Checks a `<Say>`'s attributes; returns its `loop` (default 1; 0 is
/// "until the call ends", heard here once).
fn check_say(attrs: &[(String, String)]) -> Result<u32, String> {
    let mut times = 1;
    for (name, value) in attrs {
        match name.as_str() {
            "loop" => {
                times = value
                    .parse::<u32>()
                    .map_err(|_| format!("<Say loop={value:?}> is not a non-negative integer"))?
                    .max(1);
            }
            "voice" | "language" => {
                if value.trim().is_empty() {
                    return Err(format!("<Say {name}> is empty"));
                }
            }
            other => return Err(format!("<Say> has no attribute {other:?}")),
        }
    }
    Ok(times)
}

/// Validates `document` and returns what the callee hears: the text of its
/// `<Say>` verbs, each as often as its `loop` says, joined by a space; or
/// why Twilio would refuse it.
pub fn spoken_text(document: &str) -> Result<String, String> {
    parse_body(document)
}

/// Walks the document from its root, collecting `<Say>` text.
fn parse_body(document: &str) -> Result<String, String> {
    let mut reader = Reader::from_str(document);
    let mut depth = 0usize;
    let mut said: Vec<String> = Vec::new();
    let mut in_say: Option<String> = None;
    let mut say_times = 1;
    let mut root_done = false;
    loop {
        let event = reader.read_event().map_err(|e| format!("not well-formed XML: {e}"))?;
        match event {
            Event::Start(tag) => {
                let name = String::from_utf8_lossy(tag.name().as_ref()).into_owned();
                match depth {
                    0 if name == "Response" && !root_done => {}
                    0 => return Err(format!("the root element must be one <Response>, found <{name}>")),
                    1 => {
                        if !VERBS.contains(&name.as_str()) {
                            return Err(format!("<{name}> is not a TwiML verb"));
                        }
                        if name == "Say" {
                            say_times = check_say(&attributes(&tag)?)?;
                            in_say = Some(String::new());
                        }
                    }
                    // Nested nouns (inside Gather, Dial, …) and SSML inside Say.
                    _ => {}
                }
                depth += 1;
            }
            Event::Empty(tag) => {
                let name = String::from_utf8_lossy(tag.name().as_ref()).into_owned();
                match depth {
                    0 if name == "Response" && !root_done => root_done = true,
                    0 => return Err(format!("the root element must be one <Response>, found <{name}>")),
                    1 if !VERBS.contains(&name.as_str()) => {
                        return Err(format!("<{name}> is not a TwiML verb"));
                    }
                    1 if name == "Say" => return Err("<Say/> has no text".into()),
                    _ => {}
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1
                    && let Some(text) = in_say.take()
                {
                    let text = text.trim().to_owned();
                    if text.is_empty() {
                        return Err("<Say> has no text".into());
                    }
                    said.extend(std::iter::repeat_n(text, say_times as usize));
                }
                if depth == 0 {
                    root_done = true;
                }
            }
            Event::Text(t) => {
                let text = t.decode().map_err(|e| format!("bad text: {e}"))?;
                if depth == 0 && !text.trim().is_empty() {
                    return Err("text outside <Response>".into());
                }
                if let Some(say) = in_say.as_mut() {
                    say.push_str(&text);
                }
            }
            Event::CData(t) => {
                if let Some(say) = in_say.as_mut() {
                    say.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| format!("bad reference: {e}"))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| e.to_string())?;
                        match name.as_ref() {
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "amp" => "&".into(),
                            "quot" => "\"".into(),
                            "apos" => "'".into(),
                            other => return Err(format!("unknown entity &{other};")),
                        }
                    }
                };
                if let Some(say) = in_say.as_mut() {
                    say.push_str(&resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed element".into());
    }
    if !root_done {
        return Err("no <Response> element".into());
    }
    Ok(said.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twiml_tocsin_serves_parses_back_to_its_text() {
        let text = "Rising <fast> & \"now\" — l'eau monte";
        let doc = tocsin_core::twilio::twiml(text, "en-US", 1, Some("Polly.Joanna"));
        assert_eq!(spoken_text(&doc).as_deref(), Ok(text));
        assert_eq!(
            spoken_text("<Response><Say>a</Say><Pause length=\"1\"/><Say>b</Say></Response>").as_deref(),
            Ok("a b")
        );
        assert_eq!(spoken_text("<Response/>").as_deref(), Ok(""));
        assert_eq!(spoken_text("<Response><Say>&#65;&#x42;</Say></Response>").as_deref(), Ok("AB"));
    }

    #[test]
    fn invalid_twiml_is_refused() {
        for doc in [
            "",
            "not xml",
            "<Reply><Say>x</Say></Reply>",
            "<Response><Shout>x</Shout></Response>",
            "<Response><Say loop=\"-1\">x</Say></Response>",
            "<Response><Say colour=\"red\">x</Say></Response>",
            "<Response><Say></Say></Response>",
            "<Response><Say>x</Say>",
            "<Response><Say>x &bogus; y</Say></Response>",
            "<Response></Response><Response></Response>",
        ] {
            assert!(spoken_text(doc).is_err(), "{doc:?} should be refused");
        }
    }
}
