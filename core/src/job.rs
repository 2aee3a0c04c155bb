//! The call job: the one wire contract between producer, webhook (redials)
//! and worker. It carries only identities; everything else is read from the
//! campaign row so that an edit applies to jobs already queued.

use serde::{Deserialize, Serialize};

use crate::{CallId, CampaignId, PhoneNumber};

/// Current version of the job message. A worker rejects versions it does not
/// know to the dead-letter queue instead of guessing.
pub const JOB_VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallJob {
    pub v: u8,
    pub call_id: CallId,
    pub campaign_id: CampaignId,
    pub to: PhoneNumber,
    /// 1 for the first attempt, incremented for each redial.
    pub attempt: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum JobDecodeError {
    #[error("job is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("job version {0} is not supported (expected {JOB_VERSION})")]
    UnsupportedVersion(u8),
    #[error("job attempt must be at least 1")]
    ZeroAttempt,
    #[error(
        "job names call {call} which is not the call of its campaign and number ({expected}): no such call can exist"
    )]
    ForeignCall { call: CallId, expected: CallId },
}

impl CallJob {
    pub fn new(campaign_id: CampaignId, to: PhoneNumber, attempt: u32) -> Self {
        Self { v: JOB_VERSION, call_id: CallId::derive(campaign_id, &to), campaign_id, to, attempt }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, JobDecodeError> {
        let job: Self = serde_json::from_slice(bytes)?;
        if job.v != JOB_VERSION {
            return Err(JobDecodeError::UnsupportedVersion(job.v));
        }
        if job.attempt == 0 {
            return Err(JobDecodeError::ZeroAttempt);
        }
        let expected = CallId::derive(job.campaign_id, &job.to);
        if job.call_id != expected {
            return Err(JobDecodeError::ForeignCall { call: job.call_id, expected });
        }
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_matches_the_documented_wire_format() {
        let campaign = CampaignId::from_name("demo");
        let to = PhoneNumber::from_e164("+14155550100").unwrap();
        let job = CallJob::new(campaign, to.clone(), 1);
        let value: serde_json::Value = serde_json::from_slice(&job.to_bytes()).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["to"], "+14155550100");
        assert_eq!(value["attempt"], 1);
        assert_eq!(value["campaign_id"], campaign.to_string());
        assert_eq!(value["call_id"], CallId::derive(campaign, &to).to_string());
        assert_eq!(CallJob::decode(&job.to_bytes()).unwrap(), job);
    }

    #[test]
    fn bad_jobs_are_rejected_with_a_reason() {
        assert!(matches!(CallJob::decode(b"nope"), Err(JobDecodeError::Malformed(_))));
        let v2 = br#"{"v":2,"call_id":"6f1c2b7e-5a3d-4c8e-9b0a-7d2e1f4c3a5b","campaign_id":"6f1c2b7e-5a3d-4c8e-9b0a-7d2e1f4c3a5b","to":"+14155550100","attempt":1}"#;
        assert!(matches!(CallJob::decode(v2), Err(JobDecodeError::UnsupportedVersion(2))));
        let bad_number = br#"{"v":1,"call_id":"6f1c2b7e-5a3d-4c8e-9b0a-7d2e1f4c3a5b","campaign_id":"6f1c2b7e-5a3d-4c8e-9b0a-7d2e1f4c3a5b","to":"4155550100","attempt":1}"#;
        assert!(CallJob::decode(bad_number).is_err());
        // The call id is derived from the campaign and the number: a job
        // naming another id names a call that cannot exist.
        let foreign = br#"{"v":1,"call_id":"6f1c2b7e-5a3d-4c8e-9b0a-7d2e1f4c3a5b","campaign_id":"6f1c2b7e-5a3d-4c8e-9b0a-7d2e1f4c3a5b","to":"+14155550100","attempt":1}"#;
        assert!(matches!(CallJob::decode(foreign), Err(JobDecodeError::ForeignCall { .. })));
    }
}
