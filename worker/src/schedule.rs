//! When a campaign may call: not before its `start_at`, and only inside its
//! daily calling window in the campaign's time zone.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use tocsin_core::db::Campaign;

/// How long to wait before this campaign may call, or `None` if it may call now.
/// `contact_timezone` (the contact's own zone, if the list gave one)
/// overrides the campaign's for the window.
pub fn wait_before_calling(
    campaign: &Campaign,
    contact_timezone: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if let Some(start) = campaign.start_at
        && start > now
    {
        return (start - now).to_std().ok();
    }
    let (Some(open), Some(close)) = (campaign.window_start, campaign.window_end) else {
        return None;
    };
    let tz: Tz = contact_timezone.unwrap_or(&campaign.timezone).parse().unwrap_or(chrono_tz::UTC);
    until_window(open, close, tz, now)
}

/// Time until `[open, close)` (local time in `tz`) next contains an
/// instant, or `None` if `now` is inside it. A window whose close is before
/// its open spans midnight (e.g. 20:00–08:00).
pub fn until_window(open: NaiveTime, close: NaiveTime, tz: Tz, now: DateTime<Utc>) -> Option<Duration> {
    let local = now.with_timezone(&tz);
    let t = local.time();
    let inside = if open <= close { t >= open && t < close } else { t >= open || t < close };
    if inside || open == close {
        return None;
    }
    // The next local date on which `open` lies ahead.
    let mut date = local.date_naive();
    if t >= open {
        date = date.succ_opt()?;
    }
    // A DST gap can skip `open`; look a few days ahead at most.
    for _ in 0..3 {
        if let Some(next) = tz.from_local_datetime(&date.and_time(open)).earliest()
            && next > local
        {
            return (next.with_timezone(&Utc) - now).to_std().ok();
        }
        date = date.succ_opt()?;
    }
    Some(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn inside_the_window_calls_now() {
        assert_eq!(until_window(t(9, 0), t(20, 0), chrono_tz::UTC, utc("2026-11-22T12:00:00Z")), None);
        // Overnight window.
        assert_eq!(until_window(t(20, 0), t(8, 0), chrono_tz::UTC, utc("2026-11-22T23:00:00Z")), None);
        assert_eq!(until_window(t(20, 0), t(8, 0), chrono_tz::UTC, utc("2026-11-22T07:59:00Z")), None);
    }

    #[test]
    fn outside_the_window_waits_until_it_opens_in_the_campaign_zone() {
        // 07:00 UTC = 08:00 in Paris (winter): opens at 09:00 Paris, in one hour.
        let wait = until_window(t(9, 0), t(20, 0), chrono_tz::Europe::Paris, utc("2026-11-22T07:00:00Z"));
        assert_eq!(wait, Some(Duration::from_secs(3600)));
        // 21:00 UTC: closed until 09:00 UTC tomorrow.
        let wait = until_window(t(9, 0), t(20, 0), chrono_tz::UTC, utc("2026-11-22T21:00:00Z"));
        assert_eq!(wait, Some(Duration::from_secs(12 * 3600)));
        // Overnight window, midday: opens at 20:00.
        let wait = until_window(t(20, 0), t(8, 0), chrono_tz::UTC, utc("2026-11-22T12:00:00Z"));
        assert_eq!(wait, Some(Duration::from_secs(8 * 3600)));
    }
}
