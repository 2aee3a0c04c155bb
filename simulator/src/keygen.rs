//! Keys for simulated accounts: RSA key pairs for Vonage applications and
//! Ed25519 signing seeds for Telnyx (the demo and tests make their own; no
//! key is ever committed).

use std::path::Path;

use anyhow::Context;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;

/// A PEM-encoded RSA key pair: PKCS#8 private key and SPKI public key.
pub struct PemKeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

pub fn generate() -> anyhow::Result<PemKeyPair> {
    let pair =
        KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
    let private = pair.as_der().map_err(|_| anyhow::anyhow!("encoding the private key failed"))?;
    let public = pair.public_key().as_der().map_err(|_| anyhow::anyhow!("encoding the public key failed"))?;
    Ok(PemKeyPair {
        private_pem: pem("PRIVATE KEY", private.as_ref()),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `vonage_private.pem` (mode 0600) and `vonage_public.pem` into `dir`.
pub fn write_vonage_keys(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let keys = generate()?;
    let private = dir.join("vonage_private.pem");
    std::fs::write(&private, keys.private_pem).with_context(|| format!("writing {}", private.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;
    }
    let public = dir.join("vonage_public.pem");
    std::fs::write(&public, keys.public_pem).with_context(|| format!("writing {}", public.display()))?;
    println!("wrote {} and {}", private.display(), public.display());
    Ok(())
}

/// Writes `telnyx_seed` (base64 Ed25519 seed, mode 0600) and
/// `telnyx_public_key` (base64 public key, what `TOCSIN_TELNYX_PUBLIC_KEY` takes) into `dir`.
pub fn write_telnyx_keys(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let seed: [u8; 32] = rand::random();
    let key = tocsin_core::telnyx::signing_key(&seed).map_err(anyhow::Error::msg)?;
    let seed_path = dir.join("telnyx_seed");
    std::fs::write(&seed_path, base64::engine::general_purpose::STANDARD.encode(seed))
        .with_context(|| format!("writing {}", seed_path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&seed_path, std::fs::Permissions::from_mode(0o600))?;
    }
    let public = dir.join("telnyx_public_key");
    std::fs::write(&public, tocsin_core::telnyx::public_key_base64(&key))
        .with_context(|| format!("writing {}", public.display()))?;
    println!("wrote {} and {}", seed_path.display(), public.display());
    Ok(())
}
