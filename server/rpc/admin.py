"""The `Admin` service: one servicer made of its parts (settings, accounts, tenancy), every method translated
by the same wrapper (server/rpc/errors.py `method`): refusals and failures become statuses the same way."""

from __future__ import annotations

from callgate.v1 import admin_pb2_grpc
from server.rpc.admin_accounts import AccountsAdmin
from server.rpc.admin_settings import SettingsAdmin
from server.rpc.admin_tenancy import TenancyAdmin
from server.rpc.errors import method


class AdminServicer(SettingsAdmin, AccountsAdmin, TenancyAdmin, admin_pb2_grpc.AdminServicer):
    PushSettings = method(SettingsAdmin._push_settings)
    PushSettingsUpload = method(SettingsAdmin._push_settings_upload)
    GetSettings = method(SettingsAdmin._get_settings)
    ListVersions = method(SettingsAdmin._list_versions)
    Rollback = method(SettingsAdmin._rollback)
    PatchBlacklist = method(SettingsAdmin._patch_blacklist)
    Stats = method(SettingsAdmin._stats)
    UploadDocuments = method(AccountsAdmin._upload_documents)
    ListDocuments = method(AccountsAdmin._list_documents)
    ReviewDocuments = method(AccountsAdmin._review_documents)
    GetBalance = method(AccountsAdmin._get_balance)
    ListLedger = method(AccountsAdmin._list_ledger)
    Credit = method(AccountsAdmin._credit)
    Card = method(AccountsAdmin._card)
    ListCalls = method(AccountsAdmin._list_calls)
    CreateToken = method(TenancyAdmin._create_token)
    ListTokens = method(TenancyAdmin._list_tokens)
    RevokeToken = method(TenancyAdmin._revoke_token)
    NumberOwner = method(TenancyAdmin._number_owner)
    TransferNumber = method(TenancyAdmin._transfer_number)
    ExportFailover = method(TenancyAdmin._export_failover)
    ListAudit = method(TenancyAdmin._list_audit)
    RemoveTenant = method(TenancyAdmin._remove_tenant)
    ListReplicas = method(TenancyAdmin._list_replicas)
