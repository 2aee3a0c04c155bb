//! `producer apikey create|list|revoke`: keys for the HTTP API (`/api/v1`);
//! the keys themselves are `tocsin_core::apikey`'s.

use anyhow::Context;
use sqlx::PgPool;
use tocsin_core::apikey::{self, KeyError, parse_scopes};

use crate::Fatal;
use crate::config::ApikeyCommand;

/// `producer apikey …`.
pub async fn run(pool: &PgPool, cmd: ApikeyCommand) -> anyhow::Result<()> {
    match cmd {
        ApikeyCommand::Create { name, scope, campaign_prefix } => {
            let scopes = parse_scopes(&scope).map_err(Fatal::Usage)?;
            let key = apikey::create(pool, &name, &scopes, &campaign_prefix).await.map_err(|e| match e {
                KeyError::Refused(m) => anyhow::Error::from(Fatal::Usage(m)),
                other => anyhow::Error::from(other),
            })?;
            say!("{key}");
            tell!(
                "created API key {name:?} with scopes {}{}; it is shown only now, store it safely",
                scopes.join(","),
                if campaign_prefix.is_empty() {
                    String::new()
                } else {
                    format!(" for campaigns starting with {}", campaign_prefix.join(" or "))
                }
            );
            Ok(())
        }
        ApikeyCommand::List { json } => {
            let keys = apikey::list(pool).await.context("reading API keys")?;
            if json {
                for k in &keys {
                    say!("{}", serde_json::to_string(k)?);
                }
                return Ok(());
            }
            if keys.is_empty() {
                say!("no API keys (producer apikey create --name NAME --scope campaigns:read creates one)");
            }
            for k in keys {
                let state =
                    k.revoked_at.map_or("active".to_owned(), |t| format!("revoked {}", t.format("%F %R")));
                let prefixes =
                    if k.campaign_prefixes.is_empty() { "*".into() } else { k.campaign_prefixes.join(",") };
                say!("{}  {}  {}  campaigns {}  {}", k.name, k.key_id, k.scopes.join(","), prefixes, state);
            }
            Ok(())
        }
        ApikeyCommand::Revoke { name } => {
            if apikey::revoke(pool, &name).await.context("revoking the API key")? {
                say!("revoked API key {name:?}");
                Ok(())
            } else {
                Err(Fatal::Usage(format!("no active API key named {name:?}")).into())
            }
        }
    }
}
