//! The drills as the README numbers and names them.

/// The drills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    RelayKill,
    KafkaOutage,
    PgRestart,
    Standby,
    AckBeforeMark,
    Rollbacks,
    PrimaryFailover,
    KafkaLeaderFailover,
}

impl Scenario {
    /// What runs by default: every drill that needs nothing beyond the stack.
    pub const ALL: [Scenario; 6] = [
        Scenario::RelayKill,
        Scenario::KafkaOutage,
        Scenario::PgRestart,
        Scenario::Standby,
        Scenario::AckBeforeMark,
        Scenario::Rollbacks,
    ];

    pub fn number(self) -> u8 {
        match self {
            Scenario::RelayKill => 1,
            Scenario::KafkaOutage => 2,
            Scenario::PgRestart => 3,
            Scenario::Standby => 4,
            Scenario::AckBeforeMark => 5,
            Scenario::Rollbacks => 6,
            Scenario::PrimaryFailover => 7,
            Scenario::KafkaLeaderFailover => 8,
        }
    }

    pub fn from_number(n: u8) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .chain([Scenario::PrimaryFailover, Scenario::KafkaLeaderFailover])
            .find(|s| s.number() == n)
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::RelayKill => "relay kill -9 at random moments",
            Scenario::KafkaOutage => "Kafka broker stopped",
            Scenario::PgRestart => "PostgreSQL fast-shutdown restart",
            Scenario::Standby => "active relay killed, standby takes over",
            Scenario::AckBeforeMark => "crash between Kafka ack and PROCESSED",
            Scenario::Rollbacks => "rolled-back transactions under load",
            Scenario::PrimaryFailover => "PostgreSQL primary killed, standby promoted",
            Scenario::KafkaLeaderFailover => {
                "Kafka cluster: leader killed, rolling restart, too few in-sync replicas"
            }
        }
    }
}
