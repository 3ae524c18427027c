//! Password hashing with argon2id, off the async executor and with bounded concurrency.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::{Password, PasswordHash};

/// OWASP Password Storage Cheat Sheet, argon2id option 2: 19 MiB of memory, two
/// passes, one lane.
pub const OWASP_MEMORY_KIB: u32 = 19_456;
pub const OWASP_ITERATIONS: u32 = 2;
pub const OWASP_PARALLELISM: u32 = 1;

/// Hashes passwords on the blocking thread pool, at most `max_concurrent` at a time.
///
/// Invariant: each hash holds a permit from start to finish, including when the request
/// that asked for it has gone away, so a burst of sign-ups costs at most
/// `max_concurrent` cores and `max_concurrent × 19 MiB`, and leaves the executor free
/// to serve everything else. Waiting requests queue on the semaphore.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
}

/// Hashing could not complete.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2 failed: {0}")]
    Argon2(argon2::password_hash::Error),
    #[error("hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl PasswordHasher {
    /// A hasher with OWASP's parameters running at most `max_concurrent` hashes at once.
    pub fn new(max_concurrent: usize) -> Self {
        let params = Params::new(OWASP_MEMORY_KIB, OWASP_ITERATIONS, OWASP_PARALLELISM, None)
            .expect("OWASP argon2 parameters are valid");
        Self {
            params,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// One permit per available core.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Hashes `password` with a fresh random salt into a PHC string.
    pub async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the hashing semaphore is never closed");
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let salt = SaltString::generate(&mut OsRng);
            argon2::PasswordHasher::hash_password(
                &Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
                password.expose().as_bytes(),
                &salt,
            )
            .map(|hash| PasswordHash::from_phc(hash.to_string()))
            .map_err(HashError::Argon2)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordVerifier;
    use secrecy::SecretString;

    fn password(s: &str) -> Password {
        Password::parse(SecretString::from(s)).unwrap()
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = PasswordHasher::new(1)
            .hash(password("correct horse battery staple"))
            .await
            .unwrap();
        let phc = argon2::PasswordHash::new(hash.as_phc()).unwrap();
        assert_eq!(phc.algorithm.as_str(), "argon2id");
        assert_eq!(phc.params.get_decimal("m"), Some(OWASP_MEMORY_KIB));
        assert_eq!(phc.params.get_decimal("t"), Some(OWASP_ITERATIONS));
        assert_eq!(phc.params.get_decimal("p"), Some(OWASP_PARALLELISM));
        assert!(Argon2::default()
            .verify_password(b"correct horse battery staple", &phc)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong horse battery staple", &phc)
            .is_err());
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_each_time() {
        let hasher = PasswordHasher::new(2);
        let a = hasher.hash(password("same password")).await.unwrap();
        let b = hasher.hash(password("same password")).await.unwrap();
        assert_ne!(a.as_phc(), b.as_phc());
    }
}
