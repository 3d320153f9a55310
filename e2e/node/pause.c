/* The pod sandbox's pause process for the local real node: holds the pod's namespaces, exits on
 * SIGINT/SIGTERM, reaps zombies (it is PID 1 of the pod when the PID namespace is shared).
 * Built statically by e2e/node/images.sh because no image registry (for the upstream pause
 * image) is reachable here. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, NULL);
  sigaction(SIGTERM, &q, NULL);
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
  return 0;
}
