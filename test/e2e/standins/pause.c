/* Stand-in for registry.k8s.io/pause: hold a namespace, do nothing, exit 0 on SIGINT or SIGTERM, reap any
 * child that gets re-parented here. Built static (gcc -static) so that the image holds this file alone. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction quit = {.sa_handler = leave};
  struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigemptyset(&quit.sa_mask);
  sigemptyset(&child.sa_mask);
  if (sigaction(SIGINT, &quit, 0) < 0 || sigaction(SIGTERM, &quit, 0) < 0 || sigaction(SIGCHLD, &child, 0) < 0)
    return 1;
  for (;;) pause();
}
