//! Typed identifiers. A call id is derived from its campaign and number, so a
//! re-run of the producer or a redelivered job always names the same call.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::PhoneNumber;

/// Namespace for call ids (UUID v5). Changing it would re-identify every call.
const CALL_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b7e_5a3d_4c8e_9b0a_7d2e_1f4c_3a5b);

/// Namespace for campaign ids (UUID v5 of the campaign's name).
const CAMPAIGN_NAMESPACE: Uuid = Uuid::from_u128(0x2d9e_41a7_c3b8_4f05_8e6a_b1c7_d904_e2f3);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct CampaignId(pub Uuid);

impl CampaignId {
    /// A campaign's id is a function of its name, so two producers enqueueing
    /// the same campaign name agree on its id without coordination.
    pub fn from_name(name: &str) -> Self {
        Self(Uuid::new_v5(&CAMPAIGN_NAMESPACE, name.as_bytes()))
    }
}

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct CallId(pub Uuid);

impl CallId {
    /// The deterministic id of the call to `number` within `campaign`.
    pub fn derive(campaign: CampaignId, number: &PhoneNumber) -> Self {
        let mut name = Vec::with_capacity(16 + number.as_str().len());
        name.extend_from_slice(campaign.0.as_bytes());
        name.extend_from_slice(number.as_str().as_bytes());
        Self(Uuid::new_v5(&CALL_NAMESPACE, &name))
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for CallId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_id_is_deterministic_and_distinct_per_number_and_campaign() {
        let c1 = CampaignId::from_name("storm");
        let c2 = CampaignId::from_name("outage");
        let a = PhoneNumber::parse("+14155550100", None).unwrap();
        let b = PhoneNumber::parse("+14155550101", None).unwrap();
        assert_eq!(CallId::derive(c1, &a), CallId::derive(c1, &a));
        assert_ne!(CallId::derive(c1, &a), CallId::derive(c1, &b));
        assert_ne!(CallId::derive(c1, &a), CallId::derive(c2, &a));
        assert_eq!(CampaignId::from_name("storm"), c1);
    }
}
