"""Fork with memory, two builds interleaved: python3 bench/fork-ab.py OLD_ALCOVE NEW_ALCOVE [ROUNDS]

Starts a daemon of each (--sandbox-pool 0, data under /tmp/alcove-fork-ab-old and -new), gives each a
forkable sandbox holding 100 MiB of random bytes and a dict, then forks each in turn (the order
alternating), removing every fork before the next; the first two rounds are left out (the
source's huge-page collapse after its first fork). Prints medians, p10-p90 and the ratio.
"""
import http.client, json, os, time, statistics, subprocess, sys, re
def start(binary, tag):
    d=f"/tmp/alcove-fork-ab-{tag}"; subprocess.run(["rm","-rf",d]); os.makedirs(d)
    log=open(f"{d}/log","w")
    p=subprocess.Popen([binary,"serve","--listen","127.0.0.1:0","--data-dir",f"{d}/data","--sandbox-pool","0"],stderr=log,stdout=log)
    for _ in range(200):
        m=re.search(r"serving http://([^ \s]+)", open(f"{d}/log").read())
        if m: break
        time.sleep(0.05)
    return p, m.group(1), open(f"{d}/data/token").read().strip()
class C:
    def __init__(s, addr, tok): s.c=http.client.HTTPConnection(addr, timeout=60); s.t=tok
    def call(s,m,p,b=None):
        s.c.request(m,p,body=None if b is None else json.dumps(b).encode(),headers={"Authorization":f"Bearer {s.t}"})
        r=s.c.getresponse(); raw=r.read()
        if r.status>=400: raise RuntimeError(raw)
        return raw
ds={}
for tag,binary in (("old",sys.argv[1]),("new",sys.argv[2])):
    p,addr,tok=start(binary,tag); c=C(addr,tok)
    sid=json.loads(c.call("POST","/v1/sandboxes",{"timeout_s":3600,"memory":"1G","disk":"64M","forkable":True}))["id"]
    c.call("POST",f"/v1/sandboxes/{sid}/code",{"code":"import os\nblob = bytearray(os.urandom(100 << 20))\nkeys = {i: str(i) for i in range(10000)}"})
    ds[tag]=(p,c,sid,[])
time.sleep(3)
N=int(sys.argv[3]) if len(sys.argv)>3 else 30
for i in range(N+2):
    for tag in (("old","new") if i%2==0 else ("new","old")):
        p,c,sid,ts=ds[tag]
        t=time.perf_counter(); fid=json.loads(c.call("POST",f"/v1/sandboxes/{sid}/fork",{"memory":True}))["id"]; dt=(time.perf_counter()-t)*1e3
        if i>=2: ts.append(dt)  # the first two: the collapse after the first fork
        c.call("DELETE",f"/v1/sandboxes/{fid}")
        time.sleep(0.2)
for tag,(p,c,sid,ts) in ds.items():
    c.call("DELETE",f"/v1/sandboxes/{sid}")
    s=sorted(ts); print(f"{tag}: fork p50 {statistics.median(s):.2f} ms (p10 {s[len(s)//10]:.2f}, p90 {s[len(s)*9//10]:.2f}) n={len(s)}")
    p.terminate(); p.wait()
    subprocess.run(["rm", "-rf", f"/tmp/alcove-fork-ab-{tag}"])  # its sandboxes were removed first
o=statistics.median(ds['old'][3]); n=statistics.median(ds['new'][3]); print(f"new/old: {n/o:.2f}x")
