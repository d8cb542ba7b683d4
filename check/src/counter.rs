//! Bounds check for a counter incremented under faults, where each increment
//! carries a unique request id so a retry cannot apply twice. An exact value
//! cannot be predicted (indeterminate increments may or may not have landed),
//! but it must lie between what was acknowledged and what was attempted.

/// Sums over a counter workload. Deltas are assumed positive: with negative
/// deltas an unacknowledged increment could lower the value, and these bounds
/// would no longer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterCheck {
    /// Sum of the deltas of acknowledged increments.
    pub acknowledged: i64,
    /// Sum of the deltas of every increment that may have been applied:
    /// acknowledged plus indeterminate, but not the definitely failed ones.
    pub attempted: i64,
    /// The value read once the workload and faults were over.
    pub observed: i64,
}

impl CounterCheck {
    /// `Ok` iff `acknowledged <= observed <= attempted`; otherwise says which
    /// bound broke and by how much.
    pub fn verdict(&self) -> Result<(), String> {
        let CounterCheck { acknowledged, attempted, observed } = *self;
        // i128: the differences of two arbitrary i64 values do not fit in one.
        let diff = |a: i64, b: i64| i128::from(a) - i128::from(b);
        if acknowledged > attempted {
            return Err(format!(
                "inconsistent input: acknowledged {acknowledged} exceeds attempted {attempted} by {} \
                 (attempted must include every acknowledged increment)",
                diff(acknowledged, attempted)
            ));
        }
        if observed < acknowledged {
            return Err(format!(
                "lower bound broken: observed {observed} is {} below acknowledged {acknowledged} \
                 (acknowledged increments were lost)",
                diff(acknowledged, observed)
            ));
        }
        if observed > attempted {
            return Err(format!(
                "upper bound broken: observed {observed} is {} above attempted {attempted} \
                 (increments applied twice, or from nowhere)",
                diff(observed, attempted)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(acknowledged: i64, attempted: i64, observed: i64) -> CounterCheck {
        CounterCheck { acknowledged, attempted, observed }
    }

    #[test]
    fn within_bounds_is_ok() {
        assert_eq!(c(10, 15, 10).verdict(), Ok(()));
        assert_eq!(c(10, 15, 12).verdict(), Ok(()));
        assert_eq!(c(10, 15, 15).verdict(), Ok(()));
        assert_eq!(c(0, 0, 0).verdict(), Ok(()));
    }

    #[test]
    fn lost_increment_breaks_lower_bound() {
        let e = c(10, 15, 7).verdict().unwrap_err();
        assert!(e.starts_with("lower bound broken"), "{e}");
        assert!(e.contains("is 3 below acknowledged 10"), "{e}");
    }

    #[test]
    fn double_apply_breaks_upper_bound() {
        let e = c(10, 15, 17).verdict().unwrap_err();
        assert!(e.starts_with("upper bound broken"), "{e}");
        assert!(e.contains("is 2 above attempted 15"), "{e}");
    }

    #[test]
    fn inconsistent_input_is_reported() {
        let e = c(20, 15, 17).verdict().unwrap_err();
        assert!(e.starts_with("inconsistent input"), "{e}");
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let e = c(i64::MAX, i64::MAX, i64::MIN).verdict().unwrap_err();
        assert!(e.contains(&format!("is {} below", i128::from(i64::MAX) - i128::from(i64::MIN))), "{e}");
    }
}
