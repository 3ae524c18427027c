//! The settlement rule over a batch: transfers applied one after the other, in the
//! order their events arrived, to balances read once (and locked) for the whole batch.
//!
//! Applying in arrival order is what keeps each account's history the one its events
//! describe: a deposit consumed before a transfer out of the same account funds it, a
//! transfer consumed first fails for lack of funds, whether both events land in one
//! batch or in two. A balance never goes below zero.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use uuid::Uuid;

use super::FailureReason;

/// How one transfer settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The money moved.
    Completed,
    /// No money moved, for this reason.
    Failed(FailureReason),
}

/// A transfer named an account the ledger was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("account {0} is not in the ledger")]
pub struct UnknownAccount(pub Uuid);

/// The balances of the accounts a batch touches, as the batch moves money.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    balances: BTreeMap<Uuid, Decimal>,
    changed: BTreeSet<Uuid>,
}

impl Ledger {
    /// A ledger over these balances (as locked in the database).
    pub fn new(balances: impl IntoIterator<Item = (Uuid, Decimal)>) -> Self {
        Self {
            balances: balances.into_iter().collect(),
            changed: BTreeSet::new(),
        }
    }

    /// Settles `amount` from `from` (`None`: a deposit from outside) to `to`: the
    /// sender's balance must cover it, else nothing moves and the transfer fails with
    /// [`FailureReason::InsufficientFunds`]. A deposit never fails.
    pub fn settle(
        &mut self,
        from: Option<Uuid>,
        to: Uuid,
        amount: Decimal,
    ) -> Result<Settlement, UnknownAccount> {
        if !self.balances.contains_key(&to) {
            return Err(UnknownAccount(to));
        }
        if let Some(from) = from {
            let balance = self.balances.get_mut(&from).ok_or(UnknownAccount(from))?;
            if *balance < amount {
                return Ok(Settlement::Failed(FailureReason::InsufficientFunds));
            }
            *balance -= amount;
            self.changed.insert(from);
        }
        *self.balances.get_mut(&to).expect("checked above") += amount;
        self.changed.insert(to);
        Ok(Settlement::Completed)
    }

    /// The balance of `account`, if the ledger has it.
    pub fn balance(&self, account: Uuid) -> Option<Decimal> {
        self.balances.get(&account).copied()
    }

    /// The accounts whose balance changed and their new balance, in ascending id order.
    pub fn changed(&self) -> Vec<(Uuid, Decimal)> {
        self.changed
            .iter()
            .map(|id| (*id, self.balances[id]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_deposit_consumed_before_a_transfer_funds_it() {
        let mut ledger = Ledger::new([(id(1), Decimal::ZERO), (id(2), Decimal::ZERO)]);
        assert_eq!(
            ledger.settle(None, id(1), dec("10.00")),
            Ok(Settlement::Completed)
        );
        assert_eq!(
            ledger.settle(Some(id(1)), id(2), dec("10.00")),
            Ok(Settlement::Completed)
        );
        assert_eq!(ledger.balance(id(1)), Some(Decimal::ZERO));
        assert_eq!(ledger.balance(id(2)), Some(dec("10.00")));
    }

    #[test]
    fn a_transfer_consumed_before_the_deposit_fails_and_moves_nothing() {
        let mut ledger = Ledger::new([(id(1), Decimal::ZERO), (id(2), Decimal::ZERO)]);
        assert_eq!(
            ledger.settle(Some(id(1)), id(2), dec("10.00")),
            Ok(Settlement::Failed(FailureReason::InsufficientFunds))
        );
        assert!(ledger.changed().is_empty());
        ledger.settle(None, id(1), dec("10.00")).unwrap();
        assert_eq!(ledger.changed(), [(id(1), dec("10.00"))]);
        assert_eq!(ledger.balance(id(2)), Some(Decimal::ZERO));
    }

    #[test]
    fn the_exact_balance_can_be_sent_but_not_a_cent_more() {
        let mut ledger = Ledger::new([(id(1), dec("5.00")), (id(2), Decimal::ZERO)]);
        assert_eq!(
            ledger.settle(Some(id(1)), id(2), dec("5.01")),
            Ok(Settlement::Failed(FailureReason::InsufficientFunds))
        );
        assert_eq!(
            ledger.settle(Some(id(1)), id(2), dec("5.00")),
            Ok(Settlement::Completed)
        );
        assert_eq!(
            ledger.changed(),
            [(id(1), Decimal::ZERO), (id(2), dec("5.00"))]
        );
    }

    #[test]
    fn many_transfers_keep_the_total_and_never_go_negative() {
        let accounts: Vec<Uuid> = (1..=5).map(id).collect();
        let mut ledger = Ledger::new(accounts.iter().map(|a| (*a, dec("3.00"))));
        let mut failed = 0;
        for n in 0..500u32 {
            let from = accounts[(n * 7 % 5) as usize];
            let to = accounts[((n * 7 + 1 + n % 4) % 5) as usize];
            let amount = Decimal::new(i64::from(1 + n * 37 % 250), 2);
            match ledger.settle(Some(from), to, amount).unwrap() {
                Settlement::Completed => {}
                Settlement::Failed(_) => failed += 1,
            }
            assert!(accounts
                .iter()
                .all(|a| ledger.balance(*a).unwrap() >= Decimal::ZERO));
        }
        let total: Decimal = accounts.iter().map(|a| ledger.balance(*a).unwrap()).sum();
        assert_eq!(total, dec("15.00"));
        assert!(failed > 0, "the sequence should exhaust some balance");
    }

    #[test]
    fn an_account_outside_the_ledger_is_an_error_that_moves_nothing() {
        let mut ledger = Ledger::new([(id(1), dec("1.00"))]);
        assert_eq!(
            ledger.settle(Some(id(1)), id(9), dec("1.00")),
            Err(UnknownAccount(id(9)))
        );
        assert_eq!(
            ledger.settle(Some(id(9)), id(1), dec("1.00")),
            Err(UnknownAccount(id(9)))
        );
        assert_eq!(ledger.balance(id(1)), Some(dec("1.00")));
        assert!(ledger.changed().is_empty());
    }
}
