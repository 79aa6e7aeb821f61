/* test_chat.c - chat template rendering. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "chat.h"

Test(chat, chatml_without_system)
{
    char buf[256];
    int n = sp_chat_render(SP_CHAT_FAMILY_CHATML, NULL, "hi", buf, sizeof buf);
    cr_assert_str_eq(buf, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    cr_assert_eq(n, (int)strlen(buf));
}

Test(chat, chatml_with_system)
{
    char buf[256];
    sp_chat_render(SP_CHAT_FAMILY_CHATML, "be brief", "hi", buf, sizeof buf);
    cr_assert_str_eq(buf, "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                          "<|im_start|>assistant\n");
}

Test(chat, llama3)
{
    char buf[256];
    sp_chat_render(SP_CHAT_FAMILY_LLAMA3, "sys", "hi", buf, sizeof buf);
    cr_assert_str_eq(buf, "<|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

Test(chat, too_small_and_none)
{
    char buf[8];
    cr_assert_eq(sp_chat_render(SP_CHAT_FAMILY_CHATML, NULL, "hello", buf, sizeof buf), -ENOSPC);
    cr_assert_eq(sp_chat_render(SP_CHAT_FAMILY_NONE, NULL, "hello", buf, sizeof buf), -EINVAL);
    char big[512];
    const char *u = "a fairly long user message";
    cr_assert_lt(sp_chat_render(SP_CHAT_FAMILY_LLAMA3, "s", u, big, sizeof big), (int)sp_chat_render_size("s", u));
}

Test(chat, names)
{
    cr_assert_eq(sp_chat_family_from_name("chatml"), SP_CHAT_FAMILY_CHATML);
    cr_assert_eq(sp_chat_family_from_name("llama3"), SP_CHAT_FAMILY_LLAMA3);
    cr_assert_eq(sp_chat_family_from_name("vicuna"), -1);
    cr_assert_str_eq(sp_chat_family_name(SP_CHAT_FAMILY_LLAMA3), "llama3");
}
