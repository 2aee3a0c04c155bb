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

/// Checks a `<Play>`'s attributes (twilio-python `VoiceResponse.play`:
/// `loop`, `digits`; `fixtures/twilio/play.json`); returns its `loop`
/// (default 1; 0 is "until the call ends", heard here once).
fn check_play(attrs: &[(String, String)]) -> Result<u32, String> {
    let mut times = 1;
    for (name, value) in attrs {
        match name.as_str() {
            "loop" => {
                times = value
                    .parse::<u32>()
                    .map_err(|_| format!("<Play loop={value:?}> is not a non-negative integer"))?
                    .max(1);
            }
            "digits" if value.chars().all(|c| c.is_ascii_digit() || c == 'w') => {}
            "digits" => return Err(format!("<Play digits={value:?}> holds more than 0-9 and w")),
            other => return Err(format!("<Play> has no attribute {other:?}")),
        }
    }
    Ok(times)
}

/// `<Gather>`'s attributes, as twilio-python's `VoiceResponse.gather`
/// documents them (`fixtures/twilio/gather.json`).
pub const GATHER_ATTRIBUTES: [&str; 18] = [
    "input",
    "action",
    "method",
    "timeout",
    "speechTimeout",
    "maxSpeechTime",
    "profanityFilter",
    "finishOnKey",
    "numDigits",
    "partialResultCallback",
    "partialResultCallbackMethod",
    "language",
    "hints",
    "bargeIn",
    "debug",
    "actionOnEmptyResult",
    "speechModel",
    "enhanced",
];
/// What may be nested in `<Gather>` (the same fixture).
const GATHER_NOUNS: [&str; 3] = ["Say", "Play", "Pause"];

/// A `<Gather>` of keys, as the call runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gather {
    /// Where the result goes (absent: the current document's URL).
    pub action: Option<String>,
    pub post: bool,
    /// Seconds to wait for a key after the speech (default 5).
    pub timeout_secs: u32,
    /// Posts to `action` even when no key came.
    pub action_on_empty_result: bool,
}

/// What a TwiML document does: what the callee hears (each `<Say>` as often
/// as its `loop` says), the `<Gather>` that asks for a key after it, if any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    pub said: Vec<String>,
    /// Each `<Play>`'s URL and `loop`, in order.
    pub plays: Vec<(String, u32)>,
    pub gather: Option<Gather>,
}

/// Validates `document` and returns what the callee hears: the text of its
/// `<Say>` verbs, each as often as its `loop` says, joined by a space; or
/// why Twilio would refuse it.
pub fn spoken_text(document: &str) -> Result<String, String> {
    parse(document).map(|d| d.said.join(" "))
}

fn check_gather(attrs: &[(String, String)]) -> Result<Gather, String> {
    let mut gather = Gather { action: None, post: true, timeout_secs: 5, action_on_empty_result: false };
    for (name, value) in attrs {
        if !GATHER_ATTRIBUTES.contains(&name.as_str()) {
            return Err(format!("<Gather> has no attribute {name:?}"));
        }
        let bad = || format!("<Gather {name}={value:?}> is not valid");
        match name.as_str() {
            "input" if !["dtmf", "speech", "dtmf speech", "speech dtmf"].contains(&value.as_str()) => {
                return Err(bad());
            }
            "action" if !(value.starts_with("http://") || value.starts_with("https://")) => return Err(bad()),
            "action" => gather.action = Some(value.clone()),
            "method" => match value.as_str() {
                "POST" => gather.post = true,
                "GET" => gather.post = false,
                _ => return Err(bad()),
            },
            "timeout" => gather.timeout_secs = value.parse().map_err(|_| bad())?,
            "numDigits" if value.parse::<u32>().map_or(true, |n| n == 0) => return Err(bad()),
            "finishOnKey"
                if !(value.is_empty()
                    || (value.len() == 1
                        && value.chars().all(|c| c.is_ascii_digit() || c == '#' || c == '*'))) =>
            {
                return Err(bad());
            }
            "actionOnEmptyResult" => {
                gather.action_on_empty_result = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad()),
                }
            }
            _ => {}
        }
    }
    Ok(gather)
}

/// Validates `document` as Twilio would before running it, and returns
/// what it does.
pub fn parse(document: &str) -> Result<Document, String> {
    let mut reader = Reader::from_str(document);
    let mut depth = 0usize;
    let mut said: Vec<String> = Vec::new();
    let mut gather: Option<Gather> = None;
    let mut in_gather = false;
    let mut in_say: Option<String> = None;
    let mut say_depth = 0usize;
    let mut say_times = 1;
    // The text being read belongs to a <Play> (its URL), not a <Say>.
    let mut in_play = false;
    let mut plays = Vec::new();
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
                        if name == "Gather" {
                            if gather.is_some() {
                                return Err(
                                    "more than one <Gather> (the call never reaches the second)".into()
                                );
                            }
                            gather = Some(check_gather(&attributes(&tag)?)?);
                            in_gather = true;
                        }
                    }
                    2 if in_gather && !GATHER_NOUNS.contains(&name.as_str()) => {
                        return Err(format!("<{name}> cannot be nested in <Gather>"));
                    }
                    // Nested nouns (inside Dial, …) and SSML inside Say.
                    _ => {}
                }
                // What the callee hears: a <Say>'s text or a <Play>'s URL, in
                // the <Response> or in its <Gather>.
                let heard_here = depth == 1 || (depth == 2 && in_gather);
                if heard_here && (name == "Say" || name == "Play") {
                    in_play = name == "Play";
                    say_times = if in_play {
                        check_play(&attributes(&tag)?)?
                    } else {
                        check_say(&attributes(&tag)?)?
                    };
                    in_say = Some(String::new());
                    say_depth = depth;
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
                    1 if name == "Gather" => {
                        gather = Some(check_gather(&attributes(&tag)?)?);
                    }
                    _ => {}
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    in_gather = false;
                }
                if depth == say_depth
                    && let Some(text) = in_say.take()
                {
                    let text = text.trim().to_owned();
                    if in_play {
                        if !(text.starts_with("http://") || text.starts_with("https://")) {
                            return Err(format!(
                                "<Play>{text}</Play>: the simulator plays only absolute http(s) URLs"
                            ));
                        }
                        plays.push((text, say_times));
                        in_play = false;
                    } else if text.is_empty() {
                        return Err("<Say> has no text".into());
                    } else {
                        said.extend(std::iter::repeat_n(text, say_times as usize));
                    }
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
    Ok(Document { said, plays, gather })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twiml_tocsin_serves_parses_back_to_its_text() {
        let text = "Rising <fast> & \"now\" — l'eau monte";
        let doc = tocsin_core::twilio::twiml(
            &tocsin_core::campaign::Content::Text(text.into()),
            "en-US",
            1,
            Some("Polly.Joanna"),
        );
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
