//! Recordings played instead of speech, fetched as each provider fetches
//! them when the call reaches that point: Vonage's NCCO `stream`
//! (`fixtures/vonage/stream.json`: "an mp3 or wav (16-bit) audio file"),
//! Twilio's `<Play>` (`fixtures/twilio/play.json`: a plain GET without
//! Twilio's request parameters; a Content-Type outside its ten audio types
//! is error 13420), Telnyx's `playback_start` (`fixtures/telnyx/playback.json`:
//! "a WAV or MP3 file"; a file it cannot fetch ends the playback
//! `file_not_found`). Each fetch is recorded on the call (`played`).
//!
//! `/_sim/audio/alert.wav` serves a short recording of our own (a tone, 16-bit
//! WAV), so a demo or test has something to point `--audio-url` at.

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::Sim;

/// Content-Types Twilio's `<Play>` accepts (`fixtures/twilio/play.json`).
pub const TWILIO_TYPES: [&str; 10] = [
    "audio/mpeg",
    "audio/wav",
    "audio/wave",
    "audio/x-wav",
    "audio/aiff",
    "audio/x-aifc",
    "audio/x-aiff",
    "audio/x-gsm",
    "audio/gsm",
    "audio/ulaw",
];

/// MP3 or WAV, as Vonage and Telnyx document (their exact Content-Types
/// are not documented: those of the two formats).
const MP3_OR_WAV: [&str; 5] = ["audio/mpeg", "audio/mp3", "audio/wav", "audio/wave", "audio/x-wav"];

/// One recording the call fetched, and what came back.
#[derive(Clone, Debug, Serialize)]
pub struct Played {
    pub url: String,
    /// Times the provider was asked to play it (`loop`).
    pub times: u32,
    pub content_type: Option<String>,
    pub bytes: usize,
    /// Seconds one play lasts (WAV: from its header; MP3: at 128 kbit/s).
    pub secs: f64,
    /// Why the provider could not play it (the fetch failed, or a type it refuses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Played {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Fetches `url` for `provider` ("vonage", "twilio", "telnyx"), checking
/// the type that provider plays. Never fails: a failure is in `error`.
pub async fn fetch(sim: &Sim, provider: &str, url: &str, times: u32) -> Played {
    let mut played =
        Played { url: url.to_owned(), times, content_type: None, bytes: 0, secs: 0.0, error: None };
    let response = match sim.http.get(url).send().await {
        Ok(r) => r,
        Err(e) => {
            played.error = Some(format!("fetching the recording failed: {e}"));
            return played;
        }
    };
    let status = response.status();
    played.content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let body = response.bytes().await.unwrap_or_default();
    played.bytes = body.len();
    if !status.is_success() {
        played.error = Some(format!("the recording's URL answered {status}"));
        return played;
    }
    let accepted: &[&str] = if provider == "twilio" { &TWILIO_TYPES } else { &MP3_OR_WAV };
    let kind = played.content_type.clone().unwrap_or_default();
    if !accepted.contains(&kind.as_str()) {
        played.error = Some(match provider {
            "twilio" => format!("error 13420: {kind:?} is not an audio type <Play> plays"),
            _ => format!("{kind:?} is not an MP3 or WAV file"),
        });
        return played;
    }
    played.secs = duration_secs(&kind, &body);
    played
}

/// Plays a document's recordings (URL, times) in order on call
/// `provider_call_id`: each fetched once and recorded; returns the seconds
/// they play for.
pub async fn play_all(sim: &Sim, provider: &str, provider_call_id: &str, plays: &[(String, u32)]) -> f64 {
    let mut secs = 0.0;
    for (url, times) in plays {
        let played = fetch(sim, provider, url, *times).await;
        secs += played.secs * f64::from((*times).max(1));
        sim.stats.played(provider_call_id, played);
    }
    secs
}

/// How long a recording plays: a WAV's data size over its byte rate (header
/// offset 28); anything else at MP3's common 128 kbit/s.
fn duration_secs(kind: &str, body: &[u8]) -> f64 {
    if kind.contains("wav") && body.len() > 44 && &body[0..4] == b"RIFF" {
        let rate = u32::from_le_bytes([body[28], body[29], body[30], body[31]]);
        if rate > 0 {
            return (body.len() - 44) as f64 / f64::from(rate);
        }
    }
    body.len() as f64 * 8.0 / 128_000.0
}

/// A 2-second 440 Hz tone: 8 kHz, 16-bit, mono WAV.
pub fn tone_wav() -> Vec<u8> {
    const RATE: u32 = 8000;
    let samples: Vec<i16> = (0..RATE * 2)
        .map(|i| ((f64::from(i) * 440.0 * std::f64::consts::TAU / f64::from(RATE)).sin() * 8000.0) as i16)
        .collect();
    let data_len = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// `GET /_sim/audio/alert.wav`: the tone, as `audio/wav`.
pub async fn alert() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "audio/wav")], tone_wav())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tone_is_a_two_second_wav() {
        let wav = tone_wav();
        assert_eq!(&wav[0..4], b"RIFF");
        assert!((duration_secs("audio/wav", &wav) - 2.0).abs() < 1e-9);
        assert!((duration_secs("audio/mpeg", &[0; 16_000]) - 1.0).abs() < 1e-9);
    }
}
