//! Rule unit tests on views built in memory (the replay and lab tests
//! exercise the rules end to end through real bundles).

use super::*;
