//! Sessions moving between cluster nodes (`crate::cluster`'s `moves`): the shard holding a
//! client id that another node took gives its session up (written out by `carry` when the new
//! node wants it), and a restored session whose id another node owns is dropped.

use super::carry::carry;
use super::msg::{MeshMsg, Release};
use super::session::Session;
use super::subscriptions::remove_session;
use super::takeover::home_shard;
use super::Shard;
use crate::cluster::{Command, Surrender};

impl Shard {
    /// Another node took `surrender.client_id`: if this shard holds its session, removes it
    /// (its connection gets DISCONNECT 0x8E and closes; a will waiting for its delay is
    /// cancelled, as for a reconnect), records its end, and answers with it written out when
    /// wanted and persistent. Every other shard answers None.
    pub(super) async fn surrender(&self, surrender: Surrender) {
        let Surrender {
            client_id,
            wants_state,
            reply,
        } = surrender;
        let Some(mut session) = self.take_session(&client_id) else {
            let _ = reply.send(None);
            return;
        };
        let will = self.close_taken_over(&mut session);
        let carried = (wants_state && session.is_persistent).then(|| carry(&session));
        // Its last record here: a restart of this node does not bring it back.
        session.note_end();
        if carried.is_none() {
            self.requeue_shared(session.take_unfinished_shared());
        }
        let home = home_shard(&client_id, self.shards);
        let token = session.conn_token;
        self.mesh
            .post(home, MeshMsg::Release(Release { client_id, token }));
        let _ = reply.send(carried);
        if let Some(will) = will {
            self.publish_will(will).await;
        }
    }

    /// Removes `client_id`'s session from this shard, with its subscriptions and a will
    /// waiting for its delay.
    fn take_session(&self, client_id: &str) -> Option<Session> {
        let mut st = self.state.borrow_mut();
        let key = st.by_client.get(client_id).copied()?;
        let (session, gone) = remove_session(&mut st, self.id(), key)?;
        st.pending_wills.remove(&session.conn_token);
        drop(st);
        self.withdraw(key, gone);
        Some(session)
    }

    /// Asks the cluster about the persistent sessions restored here at start-up, so those
    /// whose client id moved to another node meanwhile are dropped (`surrender`).
    pub(super) fn check_restored(&self, client_ids: Vec<String>) {
        if let (Some(uplink), false) = (&self.cluster, client_ids.is_empty()) {
            uplink.post(Command::Restored { client_ids });
        }
    }
}
