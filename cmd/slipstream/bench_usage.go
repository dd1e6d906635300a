package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// procUsage is the CPU and memory a process used during a run's measured
// window, read from /proc (Linux; elsewhere the bench reports none).
type procUsage struct {
	// Scope says whose figures these are: "this process (instance and
	// bench clients)" in-process, "pid N" with -pid.
	Scope string `json:"scope"`
	// CPUSeconds is user+system CPU time during the window; CPUCores is
	// that over the window's length (1.0 = one core busy all along);
	// CPUMicrosPerMessage is it per measured message.
	CPUSeconds          float64 `json:"cpu_s"`
	CPUCores            float64 `json:"cpu_cores"`
	CPUMicrosPerMessage float64 `json:"cpu_us_per_msg"`
	// RSSPeakMiB is the largest resident set seen (sampled every 100ms);
	// RSSEndMiB the one at the window's end.
	RSSPeakMiB float64 `json:"rss_peak_mib"`
	RSSEndMiB  float64 `json:"rss_end_mib"`
}

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// which Linux fixes at 100 for user space.
const userHZ = 100

// procCPU returns the user+system CPU time of pid ("self" or a number).
func procCPU(pid string) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count the fields after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%s/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 { // field 3 (state) is f[0]; utime is field 14, stime 15
		return 0, fmt.Errorf("/proc/%s/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%s/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// procRSS returns the resident set size of pid in bytes (VmRSS).
func procRSS(pid string) (int64, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%s/status: VmRSS %q", pid, v)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%s/status has no VmRSS", pid)
}

// startBenchUsage measures this process when t runs in it (in-process
// instances, the relay), the process -pid names for -url, or nothing.
func startBenchUsage(o *benchOptions, t *benchTarget) *usageSampler {
	switch {
	case !t.remote:
		return startUsage("self", "this process (instances or relay, and bench clients)")
	case o.PID > 0:
		return startUsage(strconv.Itoa(o.PID), "pid "+strconv.Itoa(o.PID))
	}
	return nil
}

// usageSampler measures a process from start to stop: CPU by difference,
// RSS by sampling every 100ms.
type usageSampler struct {
	pid, scope string
	cpu0       time.Duration
	t0         time.Time
	done       chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	peak       int64
}

// startUsage starts measuring pid ("self" or a number); nil when /proc
// cannot tell (not Linux, no such process).
func startUsage(pid, scope string) *usageSampler {
	cpu0, err := procCPU(pid)
	if err != nil {
		return nil
	}
	rss, err := procRSS(pid)
	if err != nil {
		return nil
	}
	s := &usageSampler{pid: pid, scope: scope, cpu0: cpu0, t0: time.Now(), done: make(chan struct{}), peak: rss}
	s.wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
				s.sample()
			}
		}
	})
	return s
}

func (s *usageSampler) sample() int64 {
	rss, err := procRSS(s.pid)
	if err != nil {
		return 0
	}
	s.mu.Lock()
	s.peak = max(s.peak, rss)
	s.mu.Unlock()
	return rss
}

// stop ends the measurement of a window in which messages were measured.
func (s *usageSampler) stop(messages int64) *procUsage {
	if s == nil {
		return nil
	}
	close(s.done)
	s.wg.Wait()
	end := s.sample()
	cpu, err := procCPU(s.pid)
	if err != nil {
		return nil
	}
	elapsed := time.Since(s.t0)
	u := &procUsage{
		Scope:      s.scope,
		CPUSeconds: round3((cpu - s.cpu0).Seconds()),
		RSSPeakMiB: round3(float64(s.peak) / (1 << 20)),
		RSSEndMiB:  round3(float64(end) / (1 << 20)),
	}
	if elapsed > 0 {
		u.CPUCores = round3((cpu - s.cpu0).Seconds() / elapsed.Seconds())
	}
	if messages > 0 {
		u.CPUMicrosPerMessage = round3(float64((cpu - s.cpu0).Microseconds()) / float64(messages))
	}
	return u
}
