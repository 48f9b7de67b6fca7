! heatdis.f90: 2-D heat distribution with checkpoint/restart through the
! libckpt Fortran module (use ckpt).
!
! The Fortran twin of heatdis.c, with the same options (written
! --option=value) and the same behaviour: each rank solves its own N x N
! plate by Jacobi iterations with no communication (no MPI needed; the
! rank comes from the launcher's environment), checkpoints the grid and the
! step counter every --every steps as version <step> of checkpoint
! "heatdis" (memory-based, or file-based with --file), and on start
! resumes from the newest complete version. --out=PREFIX writes the final
! grid, raw doubles, to PREFIX.<rank>.

module heatdis_sys
  use, intrinsic :: iso_c_binding, only: c_int
  implicit none
  interface
     function c_getpid() bind(c, name='getpid')
       import :: c_int
       integer(c_int) :: c_getpid
     end function c_getpid
     function c_kill(pid, sig) bind(c, name='kill')
       import :: c_int
       integer(c_int), value :: pid, sig
       integer(c_int) :: c_kill
     end function c_kill
     function c_usleep(us) bind(c, name='usleep')
       import :: c_int
       integer(c_int), value :: us
       integer(c_int) :: c_usleep
     end function c_usleep
  end interface
  integer(c_int), parameter :: SIGKILL = 9
contains
  ! SIGKILL this process: the application dies the way a node loss kills it.
  subroutine kill_self()
    integer(c_int) :: rc
    rc = c_kill(c_getpid(), SIGKILL)
    ! Not reached; if kill(2) failed, stop hard anyway.
    error stop 9
  end subroutine kill_self
end module heatdis_sys

program heatdis
  use, intrinsic :: iso_c_binding
  use, intrinsic :: iso_fortran_env, only: int64, error_unit, output_unit
  use ckpt
  use heatdis_sys
  implicit none

  character(len=*), parameter :: NAME = 'heatdis'
  integer, parameter :: ID_GRID = 0, ID_STEP = 1

  integer :: n = 256, steps = 1000, every = 100
  character(len=4096) :: config = '', job = 'heatdis', out = ''
  logical :: file_mode = .false., stats = .false., verbose = .false.
  integer :: die_at = -1, die_rank = -1, kill_at_step = -1, delay_us = 0
  integer :: opt_rank = -1, opt_size = -1

  real(c_double), allocatable, target :: grid(:, :, :)
  integer(c_int), target :: saved_step
  integer :: rank, rc, v, step, cur, steps_done, ckpts
  integer(int64) :: t0, t1, c0, c1, rate, t_ckpt
  character(len=CKPT_MAX_PATH) :: path

  call parse_args()
  rank = opt_rank
  if (rank < 0) rank = env_rank()
  if (opt_rank >= 0) then
     rc = ckpt_init_rank(opt_rank, opt_size)
     if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_init_rank', rc)
  end if
  rc = ckpt_init(trim(config), trim(job))
  if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_init', rc)
  if (verbose) then
     write (error_unit, '(a,i0,a,i0)') 'heatdis: rank ', rank, ': pid ', c_getpid()
     flush (error_unit)
  end if

  allocate(grid(0:n + 1, 0:n + 1, 2))
  call init_grid(grid(:, :, 1))
  call init_grid(grid(:, :, 2))
  cur = 1
  step = 0
  saved_step = 0

  if (.not. file_mode) then
     rc = ckpt_mem_protect(ID_GRID, c_loc(grid(0, 0, cur)), (n + 2) * (n + 2), &
          int(c_sizeof(grid(0, 0, 1))))
     if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_mem_protect', rc)
     rc = ckpt_mem_protect(ID_STEP, c_loc(saved_step), 1, int(c_sizeof(saved_step)))
     if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_mem_protect', rc)
  end if
  v = ckpt_restart_test(NAME, -1)
  if (v >= 0) then
     if (file_mode) then
        call restart_file(v)
     else
        rc = ckpt_restart(NAME, v)
        if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_restart', rc)
        step = saved_step
     end if
     if (step /= v) then
        write (error_unit, '(a,i0,a,i0)') 'heatdis: version ', v, ' holds step ', step
        rc = ckpt_finalize()
        stop 3
     end if
     write (error_unit, '(a,i0,a,i0)') 'heatdis: rank ', rank, ': restarted from version ', v
     flush (error_unit)
  else if (v /= CKPT_ERR_NOT_FOUND) then
     call die_ckpt('ckpt_restart_test', v)
  end if

  steps_done = 0
  ckpts = 0
  t_ckpt = 0
  call system_clock(t0, rate)
  do while (step < steps)
     call step_grid(grid(:, :, cur), grid(:, :, 3 - cur))
     cur = 3 - cur
     step = step + 1
     steps_done = steps_done + 1
     if (every > 0) then
        if (mod(step, every) == 0 .and. step < steps) then
           call system_clock(c0)
           if (file_mode) then
              call checkpoint_file()
           else
              if (die_at == step .and. (die_rank < 0 .or. die_rank == rank)) then
                 write (error_unit, '(a,i0,a,i0)') 'heatdis: rank ', rank, &
                      ': dying before version ', step
                 flush (error_unit)
                 call kill_self()
              end if
              saved_step = int(step, c_int)
              ! The grids swap every step: point id 0 at the current one.
              rc = ckpt_mem_protect(ID_GRID, c_loc(grid(0, 0, cur)), (n + 2) * (n + 2), &
                   int(c_sizeof(grid(0, 0, 1))))
              if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_mem_protect', rc)
              rc = ckpt_checkpoint(NAME, step)
              if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_checkpoint', rc)
           end if
           call system_clock(c1)
           t_ckpt = t_ckpt + (c1 - c0)
           ckpts = ckpts + 1
        end if
     end if
     if (kill_at_step == step) then
        write (error_unit, '(a,i0,a,i0)') 'heatdis: rank ', rank, &
             ': killing myself after step ', step
        flush (error_unit)
        call kill_self()
     end if
     if (delay_us > 0) rc = c_usleep(int(delay_us, c_int))
  end do
  call system_clock(t1)

  if (len_trim(out) > 0) call write_out()
  write (output_unit, '(a,i0,a,i0,a,es25.17)') 'rank ', rank, ' step ', step, &
       ' sum ', sum(grid(:, :, cur))
  flush (output_unit)
  if (stats) then
     write (error_unit, '(a,i0,a,i0,a,f0.6,a,i0,a,f0.6,a)') 'heatdis: rank ', rank, ': ', &
          steps_done, ' steps in ', real(t1 - t0) / real(rate), ' s, ', ckpts, &
          ' checkpoints ', real(t_ckpt) / real(rate), ' s'
  end if
  if (.not. file_mode) then
     rc = ckpt_mem_unprotect(ID_GRID)
     rc = ckpt_mem_unprotect(ID_STEP)
  end if
  rc = ckpt_finalize()
  if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_finalize', rc)

contains

  subroutine parse_args()
    integer :: i, eq, ios
    character(len=4096) :: arg, key, val
    do i = 1, command_argument_count()
       call get_command_argument(i, arg)
       eq = index(arg, '=')
       if (eq > 0) then
          key = arg(1:eq - 1)
          val = arg(eq + 1:)
       else
          key = arg
          val = ''
       end if
       ios = 0
       select case (trim(key))
       case ('--n')
          read (val, *, iostat=ios) n
          if (n < 1) ios = 1
       case ('--steps')
          read (val, *, iostat=ios) steps
       case ('--every')
          read (val, *, iostat=ios) every
       case ('--config')
          config = val
       case ('--job')
          job = val
       case ('--file')
          file_mode = .true.
       case ('--out')
          out = val
       case ('--die-at')
          read (val, *, iostat=ios) die_at
       case ('--die-rank')
          read (val, *, iostat=ios) die_rank
       case ('--kill-at-step')
          read (val, *, iostat=ios) kill_at_step
       case ('--delay-us')
          read (val, *, iostat=ios) delay_us
       case ('--rank')
          read (val, *, iostat=ios) opt_rank
       case ('--size')
          read (val, *, iostat=ios) opt_size
       case ('--stats')
          stats = .true.
       case ('--verbose')
          verbose = .true.
       case ('--help')
          write (output_unit, '(a)') 'usage: heatdis_f [--n=N] [--steps=S] [--every=K] &
               &[--config=FILE] [--job=JOB] [--file] [--out=PREFIX] [--die-at=V] &
               &[--die-rank=R] [--kill-at-step=S] [--delay-us=U] [--rank=R --size=P] &
               &[--stats] [--verbose]   (as heatdis.c)'
          stop
       case default
          write (error_unit, '(a)') 'heatdis: unknown option ' // trim(arg) // ' (try --help)'
          stop 1
       end select
       if (ios /= 0 .or. steps < 0 .or. every < 0) then
          write (error_unit, '(a)') 'heatdis: bad value in ' // trim(arg)
          stop 1
       end if
    end do
    if ((opt_rank < 0) .neqv. (opt_size < 0)) then
       write (error_unit, '(a)') 'heatdis: --rank and --size go together'
       stop 1
    end if
  end subroutine parse_args

  ! The rank the launcher gives: the variables libckpt reads, in its order
  ! (an MPI launcher's own before Slurm's); 0 without a launcher.
  integer function env_rank()
    character(len=*), parameter :: vars(4) = [character(len=20) :: &
         'OMPI_COMM_WORLD_RANK', 'PMI_RANK', 'PMIX_RANK', 'SLURM_PROCID']
    character(len=32) :: val
    integer :: i, length, status, ios
    env_rank = 0
    do i = 1, size(vars)
       call get_environment_variable(trim(vars(i)), val, length, status)
       if (status == 0 .and. length > 0) then
          read (val, *, iostat=ios) env_rank
          if (ios /= 0) env_rank = 0
          return
       end if
    end do
  end function env_rank

  subroutine die_ckpt(call_name, code)
    character(len=*), intent(in) :: call_name
    integer, intent(in) :: code
    integer :: ignored
    write (error_unit, '(a,i0,a)') 'heatdis: ' // call_name // ': ' // ckpt_strerror(code) // &
         ' (', code, '): ' // ckpt_last_error()
    ignored = ckpt_finalize()
    stop 2
  end subroutine die_ckpt

  ! The hot top edge's temperature depends on the rank, so ranks differ.
  subroutine init_grid(h)
    real(c_double), intent(out) :: h(0:, 0:)
    h = 0.0_c_double
    h(:, 0) = 100.0_c_double + real(rank, c_double)
  end subroutine init_grid

  ! One Jacobi step from h into g; edges copied. Column-major: h(i, j) is
  ! row j, column i.
  subroutine step_grid(h, g)
    real(c_double), intent(in) :: h(0:, 0:)
    real(c_double), intent(out) :: g(0:, 0:)
    integer :: i, j
    g(:, 0) = h(:, 0)
    g(:, n + 1) = h(:, n + 1)
    do j = 1, n
       g(0, j) = h(0, j)
       g(n + 1, j) = h(n + 1, j)
       do i = 1, n
          g(i, j) = 0.25_c_double * (h(i, j - 1) + h(i, j + 1) + h(i - 1, j) + h(i + 1, j))
       end do
    end do
  end subroutine step_grid

  subroutine file_name(buf)
    character(len=*), intent(out) :: buf
    write (buf, '(a,i0,a)') 'heat-', rank, '.dat'
  end subroutine file_name

  subroutine checkpoint_file()
    character(len=64) :: fname
    integer :: u, ios, half
    rc = ckpt_checkpoint_begin(NAME, step)
    if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_checkpoint_begin', rc)
    call file_name(fname)
    rc = ckpt_route_file(trim(fname), path)
    if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_route_file', rc)
    open (newunit=u, file=trim(path), access='stream', form='unformatted', &
         status='replace', action='write', iostat=ios)
    if (ios /= 0) call die_io('creating', path)
    write (u, iostat=ios) 'HEATDISF', int(step, int64), int(n, int64)
    if (ios /= 0) call die_io('writing', path)
    if (die_at == step .and. (die_rank < 0 .or. die_rank == rank)) then
       ! Half the grid on disk, the rest never: the rank dies inside its
       ! checkpoint, as when a node goes down.
       half = (n + 2) / 2
       write (u, iostat=ios) grid(:, 0:half - 1, cur)
       flush (u)
       write (error_unit, '(a,i0,a,i0)') 'heatdis: rank ', rank, &
            ': dying half-way through version ', step
       flush (error_unit)
       call kill_self()
    end if
    write (u, iostat=ios) grid(:, :, cur)
    if (ios /= 0) call die_io('writing', path)
    close (u, iostat=ios)
    if (ios /= 0) call die_io('closing', path)
    rc = ckpt_checkpoint_end(.true.)
    if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_checkpoint_end', rc)
  end subroutine checkpoint_file

  subroutine restart_file(version)
    integer, intent(in) :: version
    character(len=64) :: fname
    character(len=8) :: magic
    integer(int64) :: s64, n64
    integer :: u, ios
    rc = ckpt_restart_begin(NAME, version)
    if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_restart_begin', rc)
    call file_name(fname)
    rc = ckpt_route_file(trim(fname), path)
    if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_route_file', rc)
    open (newunit=u, file=trim(path), access='stream', form='unformatted', &
         status='old', action='read', iostat=ios)
    if (ios /= 0) call die_io('opening', path)
    read (u, iostat=ios) magic, s64, n64
    if (ios /= 0) call die_io('reading', path)
    if (magic /= 'HEATDISF' .or. n64 /= n) then
       write (error_unit, '(a)') 'heatdis: ' // trim(path) // ': not a heatdis checkpoint of this grid'
       rc = ckpt_restart_end(.false.)
       rc = ckpt_finalize()
       stop 3
    end if
    read (u, iostat=ios) grid(:, :, cur)
    if (ios /= 0) call die_io('reading', path)
    close (u)
    rc = ckpt_restart_end(.true.)
    if (rc /= CKPT_SUCCESS) call die_ckpt('ckpt_restart_end', rc)
    step = int(s64)
  end subroutine restart_file

  subroutine die_io(what, p)
    character(len=*), intent(in) :: what, p
    integer :: ignored
    write (error_unit, '(a)') 'heatdis: ' // what // ' ' // trim(p) // ' failed'
    ignored = ckpt_finalize()
    stop 3
  end subroutine die_io

  subroutine write_out()
    character(len=4200) :: fn
    integer :: u, ios
    write (fn, '(a,a,i0)') trim(out), '.', rank
    open (newunit=u, file=trim(fn), access='stream', form='unformatted', &
         status='replace', action='write', iostat=ios)
    if (ios /= 0) call die_io('creating', fn)
    write (u, iostat=ios) grid(:, :, cur)
    if (ios /= 0) call die_io('writing', fn)
    close (u)
  end subroutine write_out

end program heatdis
