//! What the tests share: starting a mesh on real servers (`helpers`), the servers the notifier
//! delivers to (`servers`), the ledger check of the money promise (`ledger`), and running the
//! command-line tools (`shell`). The only helpers of this suite: tests never define their own.

pub mod helpers;
pub mod ledger;
pub mod servers;
pub mod shell;
