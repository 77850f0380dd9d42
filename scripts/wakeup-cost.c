// What a send() of 200 bytes on a Unix stream socket costs the sender when the
// reader sleeps in epoll_wait on the other CPU (the send must wake it) and when
// the reader polls (no wake-up). Needs 2 CPUs. Build and run:
//   gcc -O2 -pthread -o /tmp/wakeup-cost scripts/wakeup-cost.c && /tmp/wakeup-cost 20000
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <string.h>
static int sv[2], mode; static volatile int stop;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
static int cmp(const void*x,const void*y){double d=*(double*)x-*(double*)y;return d<0?-1:d>0;}
static void pin(int c){cpu_set_t s;CPU_ZERO(&s);CPU_SET(c,&s);pthread_setaffinity_np(pthread_self(),sizeof s,&s);}
static void *reader(void *a){ pin(0); char b[4096];
  int ep=epoll_create1(0); struct epoll_event ev={.events=EPOLLIN|EPOLLET,.data.fd=sv[1]}; epoll_ctl(ep,EPOLL_CTL_ADD,sv[1],&ev);
  while(!stop){ if(mode==0){ struct epoll_event e; epoll_wait(ep,&e,1,100);} 
    while(recv(sv[1],b,sizeof b,MSG_DONTWAIT)>0); }
  return 0;}
int main(int argc,char**argv){ int n=argc>1?atoi(argv[1]):20000; char msg[200]; memset(msg,'x',200);
  for(mode=0;mode<2;mode++){ socketpair(AF_UNIX,SOCK_STREAM,0,sv); int ep=epoll_create1(0); struct epoll_event ev={.events=EPOLLIN,.data.fd=sv[0]}; epoll_ctl(ep,EPOLL_CTL_ADD,sv[0],&ev);
    stop=0; pthread_t t; pthread_create(&t,0,reader,0); pin(1); usleep(10000);
    double tot=0; double *v=malloc(n*sizeof(double));
    for(int i=0;i<n;i++){ // let the reader go idle (mode 0: sleep in epoll; mode 1: it spins)
      double s=now(); while(now()-s<50000); // 50 us busy wait
      double a=now(); send(sv[0],msg,200,0); double b=now(); v[i]=b-a; tot+=b-a; }
    stop=1; send(sv[0],msg,1,0); pthread_join(t,0); close(sv[0]); close(sv[1]);
    qsort(v,n,sizeof(double),cmp);
    printf("%s: send mean %.2f us, median %.2f us, p90 %.2f us\n", mode==0?"reader asleep in epoll_wait":"reader polling (no wake-up)", tot/n/1000, v[n/2]/1000, v[n*9/10]/1000); free(v); }
}
