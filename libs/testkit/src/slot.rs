//! [`MessageSlot`]: what a test reads through a pgoutput replication slot of its own on
//! a test database, the way relay-cdc would in `capture = "messages"` mode: the
//! transactions' Begin, the logical decoding messages (`M`) and any outbox insert (`I`).

use crate::TestDb;
use sqlx::{Connection, PgConnection};

/// The publication every outbox migration creates (`outbox::PUBLICATION`).
const PUBLICATION: &str = "outbox_pub";

/// One pgoutput protocol-v1 message the slot gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// `B`: a transaction begins; `xid` as `xmin::text` of its rows shows it.
    Begin { xid: u32 },
    /// `M`: a logical decoding message.
    Message {
        transactional: bool,
        prefix: String,
        content: Vec<u8>,
    },
    /// Anything else, by its tag (`C` commit, `R` relation, `I` insert, ...).
    Other(u8),
}

/// A pgoutput slot of the test's own, created before what it should see happens.
/// Dropping it drops the slot, also when the test panics (the database's drop would
/// too; this one does not wait for it).
pub struct MessageSlot {
    name: String,
    admin_url: String,
    conn: PgConnection,
}

impl MessageSlot {
    /// Creates the slot on `db`: it sees what commits from now on.
    pub async fn create(db: &TestDb) -> Self {
        let admin_url = db.stack().database_url(&db.name);
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .expect("admin connection");
        let name = format!("t_msg_{}", crate::unique_suffix());
        sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&name)
            .execute(&mut conn)
            .await
            .expect("replication slot");
        Self {
            name,
            admin_url,
            conn,
        }
    }

    /// What committed since the slot was created or last read, in commit order; reading
    /// consumes it.
    pub async fn changes(&mut self) -> Vec<Decoded> {
        let data: Vec<Vec<u8>> = sqlx::query_scalar(
            "select data from pg_logical_slot_get_binary_changes($1, null, null, \
             'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
        )
        .bind(&self.name)
        .bind(PUBLICATION)
        .fetch_all(&mut self.conn)
        .await
        .expect("slot changes");
        data.iter().map(|d| decode(d)).collect()
    }
}

/// One pgoutput v1 message: `B` is `'B', u64 final LSN, i64 commit time, u32 xid`; `M` is
/// `'M', u8 flags (bit 0: transactional), u64 LSN, prefix (C string), u32 length,
/// content`.
fn decode(data: &[u8]) -> Decoded {
    match data.first() {
        Some(b'B') => Decoded::Begin {
            xid: u32::from_be_bytes(data[17..21].try_into().unwrap()),
        },
        Some(b'M') => {
            let flags = data[1];
            let rest = &data[10..];
            let nul = rest.iter().position(|&b| b == 0).expect("prefix ends");
            let prefix = String::from_utf8(rest[..nul].to_vec()).expect("UTF-8 prefix");
            let rest = &rest[nul + 1..];
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            assert_eq!(rest.len(), 4 + len, "the content fills the message");
            Decoded::Message {
                transactional: flags & 1 == 1,
                prefix,
                content: rest[4..].to_vec(),
            }
        }
        Some(&tag) => Decoded::Other(tag),
        None => panic!("an empty pgoutput message"),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Drop for MessageSlot {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: the async cleanup gets a thread of its own.
        let dropped = std::thread::spawn(move || -> Result<(), BoxError> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let mut conn = PgConnection::connect(&url).await?;
                    sqlx::query(
                        "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                         where slot_name = $1",
                    )
                    .bind(&name)
                    .execute(&mut conn)
                    .await?;
                    Ok::<_, BoxError>(())
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop replication slot {}: {dropped:?}", self.name);
        }
    }
}
