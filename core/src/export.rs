//! A campaign's calls as CSV, owned once: the columns and their encoding
//! for `GET /api/v1/campaigns/{name}/calls.csv` and `producer export`.
//! Rows are streamed from PostgreSQL a batch at a time (a million calls
//! never sit in memory), in the order of the contact list.

use futures::{Stream, StreamExt};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::CampaignId;

/// The header line: a contact's number and list columns, and its fate.
pub const HEADER: &str = "number,source_line,attributes,state,attempts,first_call_at,answered_at,answered_by,\
ended_at,duration_secs,confirmed_at,confirmed_attempt,confirmed_key,confirmed_late,opted_out_at,voicemail_at,\
error_code,error_detail,cost\r\n";

/// The query behind each row, every value as text (NULL: an empty field).
const ROWS: &str = "SELECT number, source_line::text, attributes::text, state, attempt::text, \
        to_char(first_dialing_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
        to_char(answered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), answered_by, \
        to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), duration_secs::text, \
        to_char(confirmed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), confirmed_attempt::text, \
        confirmed_key, confirmed_late::text, \
        to_char(opted_out_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
        to_char(voicemail_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
        error_code, error_detail, price::text \
 FROM calls WHERE campaign_id = $1 ORDER BY source_line NULLS LAST, number";

/// Columns per row (the header's).
const COLUMNS: usize = 19;

/// One field, quoted when it holds a comma, a quote or a line break
/// (RFC 4180; quotes doubled).
fn field(out: &mut String, value: Option<&str>) {
    let v = value.unwrap_or("");
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn line(row: &PgRow) -> Result<String, sqlx::Error> {
    let mut out = String::with_capacity(160);
    for i in 0..COLUMNS {
        if i > 0 {
            out.push(',');
        }
        let value: Option<String> = row.try_get(i)?;
        field(&mut out, value.as_deref());
    }
    out.push_str("\r\n");
    Ok(out)
}

/// The campaign's calls as CSV lines (the header first), streamed.
pub fn csv(
    pool: &PgPool,
    campaign: CampaignId,
) -> impl Stream<Item = Result<String, sqlx::Error>> + Send + '_ {
    let rows = sqlx::query(ROWS).bind(campaign).fetch(pool).map(|r| r.and_then(|row| line(&row)));
    futures::stream::once(async { Ok(HEADER.to_owned()) }).chain(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        let mut out = String::new();
        field(&mut out, Some("+14155550100"));
        out.push(',');
        field(&mut out, Some("{\"name\": \"Ann, \\\"the\\\" boss\"}"));
        out.push(',');
        field(&mut out, None);
        assert_eq!(out, "+14155550100,\"{\"\"name\"\": \"\"Ann, \\\"\"the\\\"\" boss\"\"}\",");
        assert_eq!(HEADER.matches(',').count(), COLUMNS - 1);
    }
}
