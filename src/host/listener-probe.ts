// "Is anyone listening there?", asked before taking over a socket path or answering 169.254.169.254. Both
// uses must fail safe: only an error that proves nobody listens (refused, no such socket, loopback down) is a
// no. A connect that hangs is a listener with a full backlog (a stuck server): a yes.
import { connect, type NetConnectOpts } from 'node:net';

const NOBODY = new Set(['ECONNREFUSED', 'ENOENT', 'ENETUNREACH', 'EADDRNOTAVAIL']);

export function somethingListens(target: NetConnectOpts, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(target);
    const done = (yes: boolean) => {
      socket.destroy();
      resolve(yes);
    };
    socket.once('connect', () => done(true));
    socket.once('error', (err: NodeJS.ErrnoException) => done(!NOBODY.has(err.code ?? '')));
    socket.setTimeout(timeoutMs, () => done(true));
  });
}
