/* Thin C layer over libfabric: most of its API is static inline functions in the headers,
 * which Rust cannot call directly. One reliable-datagram (FI_EP_RDM) endpoint with tagged
 * messages, an address vector and one completion queue. Every function returns 0 or a
 * negative fi_errno and writes a message into err on failure. */
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_tagged.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct acs_ep {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_av *av;
    struct fid_cq *cq;
    struct fid_ep *ep;
    int mr_local;
};

/* Per-operation context owned by the caller; fi_context2 must come first (FI_CONTEXT2). */
struct acs_ctx {
    struct fi_context2 fi;
    struct fid_mr *mr;
    unsigned long long id;
};

#define FAIL(rc, what)                                                                    \
    do {                                                                                  \
        snprintf(err, errlen, "%s: %s", what, fi_strerror((int)-(rc)));                   \
        acs_close(e);                                                                     \
        return (int)(rc);                                                                 \
    } while (0)

void acs_close(struct acs_ep *e) {
    if (!e) return;
    if (e->ep) fi_close(&e->ep->fid);
    if (e->av) fi_close(&e->av->fid);
    if (e->cq) fi_close(&e->cq->fid);
    if (e->domain) fi_close(&e->domain->fid);
    if (e->fabric) fi_close(&e->fabric->fid);
    if (e->info) fi_freeinfo(e->info);
    free(e);
}

int acs_open(const char *prov, struct acs_ep **out, char *err, size_t errlen) {
    struct acs_ep *e = calloc(1, sizeof *e);
    struct fi_info *hints = fi_allocinfo();
    int rc;
    if (!e || !hints) { snprintf(err, errlen, "out of memory"); free(e); fi_freeinfo(hints); return -FI_ENOMEM; }
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_TAGGED;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    hints->domain_attr->threading = FI_THREAD_SAFE;
    /* The header fingerprint travels as remote CQ data: ask for 8 bytes; providers may offer
     * fewer (verbs and EFA: 4), which acs_cq_data_size reports. */
    hints->domain_attr->cq_data_size = 8;
    if (prov && *prov) hints->fabric_attr->prov_name = strdup(prov);
    rc = fi_getinfo(FI_VERSION(1, 9), NULL, NULL, 0, hints, &e->info);
    fi_freeinfo(hints);
    if (rc) FAIL(rc, "fi_getinfo (no RDM provider with tagged messages)");
    e->mr_local = (e->info->domain_attr->mr_mode & FI_MR_LOCAL) != 0;
    if ((rc = fi_fabric(e->info->fabric_attr, &e->fabric, NULL))) FAIL(rc, "fi_fabric");
    if ((rc = fi_domain(e->fabric, e->info, &e->domain, NULL))) FAIL(rc, "fi_domain");
    struct fi_cq_attr cq = {0};
    cq.format = FI_CQ_FORMAT_TAGGED;
    cq.size = 4096;
    if ((rc = fi_cq_open(e->domain, &cq, &e->cq, NULL))) FAIL(rc, "fi_cq_open");
    struct fi_av_attr av = {0};
    av.type = FI_AV_TABLE;
    if ((rc = fi_av_open(e->domain, &av, &e->av, NULL))) FAIL(rc, "fi_av_open");
    if ((rc = fi_endpoint(e->domain, e->info, &e->ep, NULL))) FAIL(rc, "fi_endpoint");
    if ((rc = fi_ep_bind(e->ep, &e->av->fid, 0))) FAIL(rc, "fi_ep_bind(av)");
    if ((rc = fi_ep_bind(e->ep, &e->cq->fid, FI_TRANSMIT | FI_RECV))) FAIL(rc, "fi_ep_bind(cq)");
    if ((rc = fi_enable(e->ep))) FAIL(rc, "fi_enable");
    *out = e;
    return 0;
}

const char *acs_provider(struct acs_ep *e) { return e->info->fabric_attr->prov_name; }

size_t acs_cq_data_size(struct acs_ep *e) { return e->info->domain_attr->cq_data_size; }

int acs_name(struct acs_ep *e, void *buf, size_t *len) { return fi_getname(&e->ep->fid, buf, len); }

int acs_insert(struct acs_ep *e, const void *addr, unsigned long long *fi_addr) {
    fi_addr_t a;
    int n = fi_av_insert(e->av, addr, 1, &a, 0, NULL);
    if (n != 1) return n < 0 ? n : -FI_EINVAL;
    *fi_addr = a;
    return 0;
}

static int reg(struct acs_ep *e, void *buf, size_t len, unsigned long long acc, struct acs_ctx *c, void **desc) {
    *desc = NULL;
    c->mr = NULL;
    if (!e->mr_local || len == 0) return 0;
    int rc = fi_mr_reg(e->domain, buf, len, acc, 0, 0, 0, &c->mr, NULL);
    if (rc) return rc;
    *desc = fi_mr_desc(c->mr);
    return 0;
}

/* -FI_EAGAIN means: poll the completion queue and try again. */
int acs_send(struct acs_ep *e, const void *buf, size_t len, unsigned long long dest, unsigned long long tag,
             unsigned long long data, struct acs_ctx *c) {
    void *desc;
    int rc = reg(e, (void *)buf, len, FI_SEND, c, &desc);
    if (rc) return rc;
    rc = (int)fi_tsenddata(e->ep, buf, len, desc, data, dest, tag, c);
    if (rc && c->mr) { fi_close(&c->mr->fid); c->mr = NULL; }
    return rc;
}

int acs_recv(struct acs_ep *e, void *buf, size_t len, unsigned long long src, unsigned long long tag, struct acs_ctx *c) {
    void *desc;
    int rc = reg(e, buf, len, FI_RECV, c, &desc);
    if (rc) return rc;
    rc = (int)fi_trecv(e->ep, buf, len, desc, src, tag, 0, c);
    if (rc && c->mr) { fi_close(&c->mr->fid); c->mr = NULL; }
    return rc;
}

/* Reads up to max completions: ids[i] = context id, lens[i] = bytes, datas[i] = remote CQ
 * data (or ~0 if none). Returns the count, 0 if none, or a negative error with the failing
 * context's id in *err_id and a message in err. */
int acs_poll(struct acs_ep *e, unsigned long long *ids, unsigned long long *lens, unsigned long long *datas, int max,
             unsigned long long *err_id, char *err, size_t errlen) {
    struct fi_cq_tagged_entry ent[64];
    if (max > 64) max = 64;
    ssize_t n = fi_cq_read(e->cq, ent, (size_t)max);
    if (n == -FI_EAGAIN) return 0;
    if (n == -FI_EAVAIL) {
        struct fi_cq_err_entry ee = {0};
        fi_cq_readerr(e->cq, &ee, 0);
        struct acs_ctx *c = ee.op_context;
        if (c) {
            *err_id = c->id;
            if (c->mr) { fi_close(&c->mr->fid); c->mr = NULL; }
        }
        snprintf(err, errlen, "%s (%s)", fi_strerror(ee.err), fi_cq_strerror(e->cq, ee.prov_errno, ee.err_data, NULL, 0));
        return -ee.err ? -ee.err : -FI_EOTHER;
    }
    if (n < 0) { snprintf(err, errlen, "fi_cq_read: %s", fi_strerror((int)-n)); *err_id = ~0ULL; return (int)n; }
    for (ssize_t i = 0; i < n; i++) {
        struct acs_ctx *c = ent[i].op_context;
        if (c->mr) { fi_close(&c->mr->fid); c->mr = NULL; }
        ids[i] = c->id;
        lens[i] = ent[i].len;
        datas[i] = (ent[i].flags & FI_REMOTE_CQ_DATA) ? ent[i].data : ~0ULL;
    }
    return (int)n;
}

int acs_cancel(struct acs_ep *e, struct acs_ctx *c) { return (int)fi_cancel(&e->ep->fid, c); }
