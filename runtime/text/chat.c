/* chat.c - rendering of the two chat template families spindle knows. */
#include "chat.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "sp_error.h"

int sp_chat_family_from_name(const char *name)
{
    if (!strcmp(name, "chatml"))
        return SP_CHAT_FAMILY_CHATML;
    if (!strcmp(name, "llama3"))
        return SP_CHAT_FAMILY_LLAMA3;
    if (!strcmp(name, "none"))
        return SP_CHAT_FAMILY_NONE;
    return -1;
}

const char *sp_chat_family_name(sp_chat_family f)
{
    switch (f) {
    case SP_CHAT_FAMILY_CHATML: return "chatml";
    case SP_CHAT_FAMILY_LLAMA3: return "llama3";
    default: return "none";
    }
}

size_t sp_chat_render_size(const char *system, const char *user)
{
    /* The Llama-3 markup for a system + user turn and the assistant header is 152 bytes. */
    return (system ? strlen(system) : 0) + strlen(user) + 256;
}

int sp_chat_render(sp_chat_family f, const char *system, const char *user, char *buf, size_t cap)
{
    int n;
    const char *sys = system && *system ? system : NULL;
    switch (f) {
    case SP_CHAT_FAMILY_CHATML:
        n = snprintf(buf, cap, "%s%s%s<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n",
                     sys ? "<|im_start|>system\n" : "", sys ? sys : "", sys ? "<|im_end|>\n" : "",
                     user);
        break;
    case SP_CHAT_FAMILY_LLAMA3:
        n = snprintf(buf, cap,
                     "%s%s%s<|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     sys ? "<|start_header_id|>system<|end_header_id|>\n\n" : "", sys ? sys : "",
                     sys ? "<|eot_id|>" : "", user);
        break;
    default:
        return sp_error(EINVAL, "no chat template selected");
    }
    if (n < 0 || (size_t)n >= cap)
        return sp_error(ENOSPC, "chat prompt needs %d bytes, buffer has %zu", n + 1, cap);
    return n;
}
